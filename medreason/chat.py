"""`medreason chat`: answers from the base model and from a LoRA adapter, streamed or batched.

    medreason chat --adapter lora_adapter/SmolLM2-135M-Instruct                  # interactive, streamed
    medreason chat --adapter lora_adapter/SmolLM2-135M-Instruct --prompt "..." --greedy
    medreason chat --adapter lora_adapter/SmolLM2-135M-Instruct --compare --prompt "..."
    medreason chat --adapter DIR --questions questions.txt --out results/answers.jsonl

    from medreason.chat import answer, compare
    from medreason.decode import Decoding
    from medreason.session import load_for_inference
    session = load_for_inference("lora_adapter/SmolLM2-135M-Instruct")
    compare(session, ["A 24-year-old ..."], Decoding(max_new_tokens=256))

Answers are decoded by medreason.decode, the loop evaluation and GRPO use. `--compare` holds ONE copy of the base
weights: the base model's answer is generated inside PEFT's `disable_adapter()` context, the adapter's outside it.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from medreason.decode import Decoding
from medreason.errors import UserError
from medreason.session import Session, load_for_inference, prompt_text, question_messages

log = logging.getLogger(__name__)


@dataclass
class Answer:
    question: str
    text: str
    reasoning: str
    final: str
    new_tokens: int
    source: str  # "base" or "adapter"


def chat_decoding(
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    repetition_penalty: float = 1.1,
    greedy: bool = False,
    seed: int = 0,
) -> Decoding:
    """`medreason chat`'s decoding: sampled at temperature 0.7 and top-p 0.9 with a repetition penalty of 1.1
    (it breaks the loops small models fall into), or greedy."""
    return Decoding(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )


def answer(
    session: Session, questions: list[str], decoding: Decoding | None = None, *, use_adapter: bool = True, streamer=None
) -> list[Answer]:
    """Answer a batch of questions; `streamer` (a transformers streamer) streams a single question."""
    from medreason.decode import decode

    decoding = decoding or chat_decoding()
    for q in questions:
        if not q or not q.strip():
            raise UserError("empty prompt: ask a question")
    prompts = [prompt_text(session, question_messages(session, q)) for q in questions]
    with nullcontext() if use_adapter else session.adapter_off():
        done = decode(session.model, session.tokenizer, prompts, decoding, streamer=streamer)
    answers = []
    for q, c in zip(questions, done):
        reasoning, final = split_reasoning(c.text, session.template)
        answers.append(
            Answer(q, c.text, reasoning, final, c.tokens, "adapter" if use_adapter and session.adapter else "base")
        )
    return answers


def compare(session: Session, questions: list[str], decoding: Decoding | None = None) -> list[tuple[Answer, Answer]]:
    """(base answer, adapter answer) per question, from one copy of the base weights."""
    if not session.adapter:
        raise UserError("--compare needs --adapter: the comparison is base model vs base model + adapter")
    base = answer(session, questions, decoding, use_adapter=False)
    tuned = answer(session, questions, decoding, use_adapter=True)
    return list(zip(base, tuned))


def split_reasoning(text: str, template: str = "think") -> tuple[str, str]:
    """(reasoning, final answer) from a completion in the adapter's template (medreason.template.split)."""
    from medreason.template import split

    return split(text, template)


# --------------------------------------------------------------------------------------------- CLI


DISCLAIMER = "(for teaching; not medical advice)"


def cli(args) -> int:
    from medreason.guards import base_model, check_prompt_sizes, inputs, refuse_saves_onto_inputs

    sampling = chat_decoding(  # bad sampling values fail here, before the model loads
        args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty, args.greedy, args.seed
    )
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("empty prompt: --prompt needs a question")
    if args.compare and not args.adapter:
        raise UserError("--compare needs --adapter: the comparison is base model vs base model + adapter")
    questions = read_questions(args.questions) if args.questions else None
    if questions is not None:  # --out never lands on the questions, the adapter or the base model
        refuse_saves_onto_inputs(
            {"--out": args.out or "results/chat.jsonl"}, inputs(args.model, args.adapter, [args.questions])
        )
    texts = questions or ([args.prompt] if args.prompt else [])  # each must fit the context with its answer
    check_prompt_sizes(texts, base_model(args.model, args.adapter), args.max_new_tokens, args.questions or "")
    session = load_for_inference(args.adapter, args.model)
    if questions is not None:
        return _batch(session, questions, sampling, args)
    if args.prompt is not None:
        _one(session, args.prompt, sampling, args.compare)
        return 0
    return _interactive(session, sampling, args.compare)


def _one(session, question, sampling, compare_both):
    if compare_both:
        ((b, a),) = compare(session, [question], sampling)
        print_answer("base model", b)
        print_answer(f"with adapter ({session.adapter})", a)
    else:
        label = f"with adapter ({session.adapter})" if session.adapter else f"base model ({session.base_model})"
        print_answer(label, answer(session, [question], sampling)[0])


def print_answer(label: str, a: Answer):
    print(f"=== {label} {DISCLAIMER}")
    if a.reasoning:
        print("--- reasoning")
        print(a.reasoning)
        print("--- answer")
    print(a.final or "(no final answer: the reasoning used all max_new_tokens)")
    print()


def _interactive(session, sampling, compare_both) -> int:
    from transformers import TextStreamer

    print(f"medreason chat {DISCLAIMER}; quit with 'exit', 'quit', Ctrl-D or Ctrl-C")
    streamer = TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            question = input("\nyou> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if question.strip().lower() in ("exit", "quit"):
            return 0
        if not question.strip():
            continue
        try:
            if compare_both:
                print("base>", end=" ", flush=True)
                answer(session, [question], sampling, use_adapter=False, streamer=streamer)
                print("adapter>", end=" ", flush=True)
                answer(session, [question], sampling, use_adapter=True, streamer=streamer)
            else:
                print("model>", end=" ", flush=True)
                answer(session, [question], sampling, streamer=streamer)
        except KeyboardInterrupt:  # stop this answer, keep the session
            print("\n(interrupted)")


def read_questions(path: str) -> list[str]:
    """One question per line (.txt), or JSONL rows with a 'question' or 'Question' field."""
    from medreason.readers import read_text

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: file not found")
    questions = []
    for n, line in enumerate(read_text(p).split("\n"), 1):  # named when not UTF-8 or too large; editor lines
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n}: not valid JSON ({e.msg})") from e
            q = row.get("question") or row.get("Question") if isinstance(row, dict) else None
            if not isinstance(q, str) or not q.strip():
                raise UserError(f'{path} line {n}: field "question" is missing or empty')
            questions.append(q)
        else:
            questions.append(line)
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


def _batch(session, questions, sampling, args) -> int:
    from medreason.io import atomic_open
    from medreason.progress import progress

    out = Path(args.out or "results/chat.jsonl")
    desc = "answer (base and adapter)" if args.compare else "answer"
    with atomic_open(out) as f, progress(total=len(questions), desc=desc, unit="q") as bar:
        for i in range(0, len(questions), 8):
            chunk = questions[i : i + 8]
            pairs = (
                compare(session, chunk, sampling)
                if args.compare
                else [(None, a) for a in answer(session, chunk, sampling)]
            )
            bar.update(len(chunk))
            for base, a in pairs:
                row = {"question": a.question, "reasoning": a.reasoning, "answer": a.final, "source": a.source}
                if base is not None:
                    row["base_reasoning"], row["base_answer"] = base.reasoning, base.final
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(questions)} answers written to {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- probing


def start_probability(session: Session, questions: list[str], start: str = "<think>\n"):
    """How likely each model is to open its answer with `start` (the template's reasoning block), right
    after the chat template's assistant header: P(start | prompt), the product of its tokens' probabilities,
    for the base model (adapter off) and the adapter, their ratio, and each one's most likely first token."""
    import contextlib

    import pandas as pd
    import torch

    from medreason.tokens import text_pair_ids

    tok = session.tokenizer
    variants = [("base", False)] + ([("adapter", True)] if session.adapter else [])
    rows = []
    for i, question in enumerate(questions, 1):
        # where the start begins after tokenisation: TRL's rule, as training tokenises (medreason.tokens)
        full_ids, begin = text_pair_ids(tok, prompt_text(session, question_messages(session, question)), start)
        start_ids = torch.tensor(full_ids[begin:])
        row = {"question": i}
        for name, use_adapter in variants:
            ctx = contextlib.nullcontext() if use_adapter else session.adapter_off()
            with ctx, torch.inference_mode():
                logits = session.model(input_ids=torch.tensor([full_ids], device=session.model.device)).logits
            logp = torch.log_softmax(logits[0, begin - 1 : -1].float().cpu(), dim=-1)
            row[f"P(start | {name})"] = float(logp.gather(1, start_ids[:, None]).sum().exp())
            row[f"first token {name}"] = repr(tok.decode([int(logp[0].argmax())]))
        if session.adapter:
            row["adapter / base"] = row["P(start | adapter)"] / max(row["P(start | base)"], 1e-300)
        rows.append(row)
    return pd.DataFrame(rows).set_index("question")
