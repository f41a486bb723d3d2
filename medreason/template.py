"""The completion format, in one place: how a reasoning trace and its answer are written (training data) and
read back (chat, answer extraction, the GRPO format reward).

    from medreason import template
    template.render("Sudden tearing chest pain ...", "The answer is C.")   # "<think>\n...\n</think>\n\nThe answer is C."
    template.split("<think>\nreasoning\n</think>\n\nC. Aortic dissection")  # ("reasoning", "C. Aortic dissection")
    template.answer_region("<think>\nstill thinking")                       # ("\nstill thinking", False): left open

Two layouts: `think` (<think>...</think>, then the answer; SmolLM2's and DeepSeek-R1's convention) and `huatuo`
(## Thinking / ## Final Response, HuatuoGPT-o1's). A `<think>` block left open is what a completion cut by the
token budget looks like: its reasoning is all there is, and it has no answer.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HUATUO_THINKING, HUATUO_FINAL = "## Thinking", "## Final Response"
TEMPLATES = {
    "think": f"{THINK_OPEN}\n{{Complex_CoT}}\n{THINK_CLOSE}\n\n{{Response}}",
    "huatuo": f"{HUATUO_THINKING}\n\n{{Complex_CoT}}\n\n{HUATUO_FINAL}\n\n{{Response}}",
}
# what ends the reasoning in either layout: the answer is the text after the last of them
ANSWER_MARKERS = (THINK_CLOSE, HUATUO_FINAL)


def system_messages(system_prompt: str | None) -> list[dict]:
    """The system message a prompt opens with: none for an empty system prompt (the chat template then writes its
    own default, as it does at inference when none is given)."""
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


def render(reasoning: str, answer: str, template: str = "think") -> str:
    """The completion a model is trained to write."""
    return TEMPLATES[template].format(Complex_CoT=reasoning, Response=answer)


def split(text: str, template: str = "think") -> tuple[str, str]:
    """(reasoning, answer) of a completion in `template`'s layout. No reasoning block: the whole text is the
    answer. A `<think>` block left open (the budget ran out): all reasoning, no answer."""
    if template == "huatuo":
        m = re.search(rf"{HUATUO_THINKING}\s*(.*?)\s*{HUATUO_FINAL}\s*(.*)", text, re.S)
        return (m.group(1).strip(), m.group(2).strip()) if m else ("", text.strip())
    m = re.search(rf"{THINK_OPEN}\s*(.*?)\s*{THINK_CLOSE}\s*(.*)", text, re.S)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].strip(), ""
    return "", text.strip()


def answer_region(text: str) -> tuple[str, bool]:
    """(the text after the last `</think>` or `## Final Response`, True); for a `<think>` block left open, (the
    whole text without its tags, False); with no markers at all, (the whole text, True)."""
    for marker in ANSWER_MARKERS:
        at = text.rfind(marker)
        if at >= 0:
            return text[at + len(marker) :], True
    if THINK_OPEN in text:
        return without_tags(text), False
    return text, True


def without_tags(text: str) -> str:
    """The text with its `<think>` tags replaced by line breaks (the reasoning read as plain text)."""
    return text.replace(THINK_OPEN, "\n").replace(THINK_CLOSE, "\n")


def well_formed(text: str) -> bool:
    """Opens a `<think>` block, closes it exactly once, has reasoning in it and an answer (a word) after it."""
    text = text.strip()
    if not text.startswith(THINK_OPEN) or text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return False
    reasoning, _, answer = text[len(THINK_OPEN) :].partition(THINK_CLOSE)
    return bool(reasoning.strip()) and bool(re.search(r"\w", answer))
