"""The knowledge experiment's readouts: what a model knows of the bundled facts, read three ways, and the effect of
teaching read against the untaught half.

    from medreason.knowledge import recall, effect
    base_rows = recall(base_session, facts)                        # open recall: the answer names the key term
    tuned_rows = recall(tuned_session, facts)
    effect(base_rows, tuned_rows, taught_ids)                      # difference in differences, McNemar per half

Three readouts, because knowing and choosing differ at this scale:
- **recall**: the fact asked in a wording no training statement uses (Fact.recall), answered greedily, scored by
  whether the answer names the key term and none of the held-out question's wrong options (facts.names_key);
- **MCQ, generate**: the held-out question answered in the chat template at the evaluation budget, graded by the
  MCQ task (medreason.evaluate with items from facts.question_item);
- **MCQ, log-likelihood**: the same question scored by lm-eval with the chat template.
The **retrieval reference** puts the fact's training statement before the question (the base model reading the
fact instead of having learned it): the ceiling that reading gives.
"""

from __future__ import annotations

from contextlib import nullcontext

from medreason.decode import Decoding

# the recall answer's budget: a key term is a few words; the answer may first restate the question
RECALL_TOKENS = 48


def recall_prompts(session, facts, context: str = "statement", wording: str = "recall") -> list[str]:
    """Each fact's recall question as the model is asked it: the session's system prompt, then the question
    (with the retrieval reference, the fact's definition first). `wording`: "recall", the held-out wording, or
    "trained", the question-answer statement's own prompt (what the model memorised, word for word)."""
    from medreason.session import prompt_text, question_messages

    out = []
    for f in facts:
        question = f.recall if wording == "recall" else next(s.prompt for s in f.statements if s.form == "qa")
        if context == "retrieval":
            question = f"Context: {definition(f)}\n\nQuestion: {question}"
        out.append(prompt_text(session, question_messages(session, question)))
    return out


def definition(fact) -> str:
    """The fact's definition statement (the one a single-statement dose keeps)."""
    return next(s.text for s in fact.statements if s.form == "definition")


def recall(
    session, facts, *, use_adapter: bool = True, retrieval: bool = False, wording: str = "recall", batch_size: int = 64
) -> list[dict]:
    """One row per fact: its recall answer (greedy, RECALL_TOKENS) and whether it names the key term."""
    from medreason.decode import decode
    from medreason.facts import names_key

    prompts = recall_prompts(session, facts, "retrieval" if retrieval else "statement", wording)
    with nullcontext() if use_adapter else session.adapter_off():
        done = decode(
            session.model, session.tokenizer, prompts, Decoding(max_new_tokens=RECALL_TOKENS), batch_size=batch_size
        )
    return [
        {"id": f.id, "specialty": f.specialty, "answer": c.text, "correct": names_key(c.text, f), "tokens": c.tokens}
        for f, c in zip(facts, done)
    ]


def items(facts, which: str = "mcq", retrieval: bool = False):
    """The facts' questions as MCQ items (medreason.mcq), with the definition as context for the retrieval
    reference."""
    from medreason.facts import question_item

    return [question_item(f, which, context=definition(f) if retrieval else "") for f in facts]


def effect(before: list[dict], after: list[dict], taught: set[str], key: str = "correct") -> dict:
    """The effect of teaching on one readout: (after - before) on the taught facts minus (after - before) on the
    untaught ones (medreason.stats.diff_in_diff), each half's own change with McNemar's exact test, and the
    accuracies. `before`/`after`: rows with `id` and `key` (correct), matched by id (an MCQ item's id is
    '<fact>:mcq')."""
    from medreason.stats import diff_in_diff, paired_comparison

    def fact_of(row):
        return row["id"].split(":")[0]

    b = {fact_of(r): float(r[key]) for r in before}
    a = {fact_of(r): float(r[key]) for r in after}
    ids = [i for i in b if i in a]
    t = [i for i in ids if i in taught]
    u = [i for i in ids if i not in taught]
    out = diff_in_diff([b[i] for i in t], [a[i] for i in t], [b[i] for i in u], [a[i] for i in u])
    for half, chosen in (("taught", t), ("untaught", u)):
        before_half, after_half = [b[i] for i in chosen], [a[i] for i in chosen]
        out[half] = {"n": len(chosen), "before": _mean(before_half), "after": _mean(after_half)}
        if all(x in (0.0, 1.0) for x in before_half + after_half):
            pair = paired_comparison([x == 1.0 for x in before_half], [x == 1.0 for x in after_half])
            out[half] |= {"mcnemar_p": pair["p_value"], "gained": pair["c"], "lost": pair["b"]}
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
