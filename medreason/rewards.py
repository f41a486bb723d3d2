"""Verifiable rewards for GRPO on multiple-choice questions: no judge model, only the answer key.

    from medreason.rewards import correctness_reward, format_reward
    correctness_reward([[{"role": "assistant", "content": "<think>...</think>\\n\\nThe answer is B."}]],
                       answer=["B"], options=[{"A": "...", "B": "..."}])          # -> [1.0]
    format_reward(["<think>\\nreasoning\\n</think>\\n\\nB. Aspirin"])                # -> [1.0]

Both are plain functions with TRL GRPOTrainer's reward-function signature: the trainer calls
`f(prompts=..., completions=..., completion_ids=..., **columns)`, where `completions` is a list of strings
(standard prompts) or a list of message lists (conversational prompts: `[{"role": "assistant", "content": ...}]`),
and every other dataset column (here `answer` and `options`) arrives as a list with one entry per completion,
already repeated over the group. Extra keyword arguments the trainer adds (trainer_state, log_metric, ...) are
accepted and ignored.

Correctness is `medreason.mcq.grade`, the MCQ task's grading that `medreason eval --mode generate` scores with:
the reward the policy is trained on and the accuracy it is evaluated on are one definition.
"""

from __future__ import annotations

from medreason.template import well_formed


def correctness_reward(completions: list, answer: list[str], options: list[dict], **kw) -> list[float]:
    """1.0 when the extracted option label is the answer key, 0.0 when it is another one or none can be
    extracted (an unreadable answer earns nothing, the same as a wrong one)."""
    from medreason.mcq import grade

    if not len(completions) == len(answer) == len(options):
        raise ValueError(
            f"correctness_reward: {len(completions)} completions, {len(answer)} answers and "
            f"{len(options)} option sets: the dataset needs one 'answer' and one 'options' per prompt"
        )
    return [float(grade(completion_text(c), _options(o), a)[1]) for c, a, o in zip(completions, answer, options)]


def format_reward(completions: list, **kw) -> list[float]:
    """1.0 when the completion opens a `<think>` block, closes it exactly once, and writes an answer after it
    (some non-blank text); 0.0 otherwise. A block left open is what truncated or rambling reasoning looks like,
    and an empty answer after it leaves nothing to grade."""
    return [1.0 if well_formed(completion_text(c)) else 0.0 for c in completions]


def completion_text(completion) -> str:
    """The text of one completion: a string, or the content of the assistant messages of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


def _options(options) -> dict[str, str]:
    """Dataset columns of dicts come back from Arrow with every key of every row (missing ones as None): a
    four-option question in a set that also holds five-option ones gets an 'E': None. Drop those."""
    return {k: v for k, v in options.items() if v is not None}
