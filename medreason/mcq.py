"""Multiple-choice benchmarks with 2 to 10 options: load any exam file, draw stratified subsets, build the prompt.

    from medreason.mcq import load_benchmark, bundled_split, stratified_subset, prompt_messages, chance
    trivial_baselines(heldout, prior=bundled_split("pool"))   # majority label, same letter, longest option
    items = load_benchmark("my_exam.jsonl")            # JSONL, JSON, CSV or Parquet; None = the bundled benchmark
    heldout = bundled_split("heldout")                 # the bundled items no training step sees
    subset = stratified_subset(heldout, 48, seed=0)    # every group in proportion, never "the first 48"
    messages = prompt_messages(subset[0], system_prompt)   # the chat prompt that lists the options
    text = loglik_prompt(subset[0])                         # "Question: ...\\nA. ...\\nAnswer:" for lm-eval

A row is a question, 2-10 options, the answer, and optional `context`, `explanation`, `group` (or `specialty`),
`id` and `split`. Both of these shapes load:

    {"question": "...", "options": {"A": "...", "B": "...", "C": "...", "D": "...", "E": "..."}, "answer": "C"}
    {"context": "...", "question": "...", "options": ["yes", "no", "maybe"], "answer": "no"}

Lettered options are a mapping from the letters A, B, C... (in order, none skipped) to text; a list is a set of
free labels (each label is its own text) unless the answer is a letter that is not one of them, in which case the
list is the option texts in letter order. In CSV the options are a JSON cell `options` or columns `A`, `B`, ...
A bad row is a `UserError` naming the file, the row and the field.
"""

from __future__ import annotations

import json
import math
import string
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from medreason.errors import UserError
from medreason.readers import Unparseable, bundled_path, positions, read_file, where

LETTERS = tuple(string.ascii_uppercase[:10])  # A..J
MIN_OPTIONS, MAX_OPTIONS = 2, 10
SPLITS = ("pool", "heldout")


@dataclass
class MCQItem:
    id: str
    question: str
    options: dict[str, str]  # label -> text, in display order
    answer: str  # a key of options
    context: str = ""
    explanation: str = ""
    group: str = "unspecified"
    split: str | None = None

    @property
    def lettered(self) -> bool:
        return lettered(self.options)

    @property
    def chance(self) -> float:
        return 1 / len(self.options)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- loading


def load_benchmark(path: str | Path | None = None) -> list[MCQItem]:
    """Every item of a benchmark file (the bundled one by default); the first bad row is a UserError."""
    path = Path(path).expanduser() if path else bundled_path("mcq.jsonl")
    rows = read_file(path, csv_header=_csv_header_problem)
    places = positions(rows)  # each row's line in its file, as an editor counts (medreason.readers)
    if path.suffix.lower() == ".csv":
        rows = [_csv_row(row) for row in rows]
    items, seen = [], set()
    for n, row in zip(places, rows):
        item = parse_row(row, n, path)
        if item.id in seen:
            raise UserError(f'{path} {where(n)}: field "id" repeats {item.id!r}: ids must be unique')
        seen.add(item.id)
        items.append(item)
    if not items:
        raise UserError(f"{path}: no rows")
    return items


def bundled_split(name: str) -> list[MCQItem]:
    """The bundled items of one split: 'pool' (prompts for reinforcement learning) or 'heldout' (evaluation)."""
    if name not in SPLITS:
        raise UserError(f"split '{name}' is unknown: choose {' or '.join(SPLITS)}")
    items = [item for item in load_benchmark() if item.split == name]
    if not items:
        raise UserError(f"the bundled benchmark has no items in split '{name}'")
    return items


def parse_row(row, n: int, origin) -> MCQItem:
    """One row as an MCQItem; a problem is a UserError 'FILE row N: field "x" ...'."""
    if isinstance(row, Unparseable):
        raise UserError(f"{origin} {where(row.line)}: {row.problem}")
    if not isinstance(row, dict):
        raise UserError(f"{origin} {where(n)}: is {_kind(row)}, not an object with question, options, answer")

    def bad(field: str, problem: str):
        return UserError(f'{origin} {where(n)}: field "{field}" {problem}')

    for key in ("question", "options", "answer"):
        if row.get(key) is None:
            raise bad(key, "is missing")
    question = _text(row["question"], "question", bad)
    options = _options(row["options"], row["answer"], bad)
    answer = _answer(row["answer"], options, bad)
    optional = {}
    for key in ("context", "explanation"):
        optional[key] = _text(row[key], key, bad, required=False) if row.get(key) is not None else ""
    group = row.get("group") if row.get("group") is not None else row.get("specialty")
    group = _text(group, "group", bad, required=False) if group is not None else ""
    split = row.get("split")
    if split is not None and (not isinstance(split, str) or not split.strip()):
        raise bad("split", "must be text such as pool or heldout")
    ident = row.get("id")
    if ident is not None and not isinstance(ident, (str, int)):
        raise bad("id", f"is {_kind(ident)}, not text")
    return MCQItem(
        id=str(ident).strip() if ident not in (None, "") else f"row-{n}",
        question=question,
        options=options,
        answer=answer,
        context=optional["context"],
        explanation=optional["explanation"],
        group=group or "unspecified",
        split=split.strip() if split else None,
    )


def _text(value, field: str, bad, required: bool = True) -> str:
    if not isinstance(value, str):
        raise bad(field, f"is {_kind(value)}, not text")
    if required and not value.strip():
        raise bad(field, "is empty")
    return value.strip()


def _options(value, answer, bad) -> dict[str, str]:
    if isinstance(value, str) and value.strip()[:1] in "[{":  # a JSON cell, as CSV files carry it
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise bad("options", f"is not valid JSON ({e.msg})") from e
    if isinstance(value, dict):
        # Parquet fills absent struct fields with null: a row with A-D in a file that also has E
        value = {str(k).strip(): v for k, v in value.items() if v is not None}
        labels = list(value)
        expected = list(LETTERS[: len(labels)])
        if sorted(labels) != expected:
            raise bad(
                "options",
                f"must map the letters {', '.join(expected) or 'A, B'}... in order to text "
                f"(got {', '.join(labels)}); use a list for free labels such as yes / no / maybe",
            )
        options = {k: value[k] for k in expected}
    elif isinstance(value, (list, tuple)):
        texts = list(value)
        letter_answer = (
            isinstance(answer, str)
            and answer.strip().upper() in LETTERS
            and not any(isinstance(t, str) and t.strip().lower() == answer.strip().lower() for t in texts)
        )
        if letter_answer and len(texts) <= len(LETTERS):
            options = {LETTERS[i]: t for i, t in enumerate(texts)}
        else:
            for t in texts:
                if not isinstance(t, str):
                    raise bad("options", f"has {_kind(t)}, not text")
            options = {t.strip(): t.strip() for t in texts}
            if len(options) != len(texts):
                raise bad("options", "repeats a label")
    else:
        raise bad("options", f"is {_kind(value)}: give a mapping A -> text, or a list of labels")
    if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
        raise bad("options", f"has {len(options)} options: give {MIN_OPTIONS} to {MAX_OPTIONS}")
    for label, text in options.items():
        if not isinstance(text, str):
            raise bad("options", f"option {label} is {_kind(text)}, not text")
        if not text.strip():
            raise bad("options", f"option {label} is empty")
    options = {label: text.strip() for label, text in options.items()}
    if len({t.lower() for t in options.values()}) != len(options):
        raise bad("options", "has two options with the same text")
    return options


def _answer(value, options: dict[str, str], bad) -> str:
    if not isinstance(value, str):
        raise bad("answer", f"is {_kind(value)}, not one of {', '.join(options)}")
    wanted = value.strip()
    for label in options:
        if label == wanted or label.lower() == wanted.lower():
            return label
    raise bad("answer", f"is {value!r}, not one of {', '.join(options)}")


def _kind(value) -> str:
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _csv_header_problem(header: list[str]) -> str | None:
    """A header naming question and answer, and options as a JSON cell `options` or columns A, B, ..."""
    if "question" not in header or "answer" not in header or not ("options" in header or set(LETTERS) & set(header)):
        return (
            "not a CSV with a header row naming question, answer and options (a JSON cell) or option columns A, B, ..."
        )
    return None


def _csv_row(row):
    """A CSV row as a JSON row would be: options from columns A, B, ... when there is no `options` cell, and an
    empty cell an absent field."""
    if isinstance(row, Unparseable):
        return row
    if "options" not in row:
        row["options"] = {c: row.pop(c) for c in LETTERS if c in row and (row.get(c) or "").strip()}
    for key in ("context", "explanation", "group", "specialty", "split", "id"):
        if key in row and not (row[key] or "").strip():
            row[key] = None
    return row


# --------------------------------------------------------------------------------------------- subsets, chance


def stratified_subset(items: list[MCQItem], n: int | None, seed: int = 0) -> list[MCQItem]:
    """n items drawn with a fixed seed, each group in proportion to its size (largest remainders), every
    group present when n allows; returned in the benchmark's order. n=None or n >= len(items): all items."""
    import numpy as np

    if n is None or n >= len(items):
        return list(items)
    if n < 1:
        raise UserError(f"limit must be at least 1, got {n}")
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.group, []).append(i)
    names = sorted(groups)
    rng = np.random.default_rng(seed)
    shares = {g: n * len(groups[g]) / len(items) for g in names}
    quota = {g: math.floor(shares[g]) for g in names}
    tiebreak = rng.random(len(names))
    by_remainder = sorted(names, key=lambda g: (-(shares[g] - quota[g]), tiebreak[names.index(g)]))
    for g in by_remainder[: n - sum(quota.values())]:
        quota[g] += 1
    if n >= len(names):  # every group shows up: take one from the largest quota for each empty group
        for g in [g for g in names if quota[g] == 0]:
            donor = max(names, key=lambda d: (quota[d], d))
            quota[donor] -= 1
            quota[g] += 1
    chosen = []
    for g in names:
        order = rng.permutation(len(groups[g]))
        chosen += [groups[g][k] for k in order[: quota[g]]]
    return [items[i] for i in sorted(chosen)]


def chance(items: list[MCQItem]) -> float:
    """Expected accuracy of guessing uniformly: 1/k per item, averaged (k may differ between items)."""
    if not items:
        return float("nan")
    return sum(item.chance for item in items) / len(items)


def group_counts(items: list[MCQItem]) -> dict[str, int]:
    return dict(sorted(Counter(item.group for item in items).items()))


# --------------------------------------------------------------------------------------------- the task's contract

# how an answer is asked for (prompt_messages), written (the SFT data's completions) and read (extract_choice)
ANSWER_TEMPLATE = "The answer is {label}."


def lettered(options: dict[str, str]) -> bool:
    """Options labelled A, B, C... (else free labels such as yes / no / maybe, each its own text): the one rule."""
    return all(label in LETTERS for label in options) and any(label != text for label, text in options.items())


def answer_text(label: str) -> str:
    """The final line a completion ends with: 'The answer is C.'"""
    return ANSWER_TEMPLATE.format(label=label)


def extract_choice(text: str | None, options: dict[str, str]) -> str | None:
    """The label (a key of `options`) an output chose, or None when it chose none or several (medreason.extract
    says what counts)."""
    from medreason.extract import choose

    return choose(text, options, lettered(options))


def grade(text: str | None, options: dict[str, str], answer: str) -> tuple[str | None, bool]:
    """(the label the output chose, whether it is the answer): how evaluation scores and GRPO rewards."""
    chosen = extract_choice(text, options)
    return chosen, chosen == answer


def prompt_messages(item: MCQItem, system_prompt: str | None) -> list[dict]:
    """The chat prompt: optional system message, then context, question, the options, and how to answer.
    The one prompt builder for generate-mode evaluation and for GRPO."""
    parts = []
    if item.context:
        parts.append(f"Context: {item.context}")
    parts.append(f"Question: {item.question}")
    if item.lettered:
        parts.append("Options:\n" + "\n".join(f"{label}. {text}" for label, text in item.options.items()))
        choices = ", ".join(item.options)
    else:
        parts.append("Options: " + " / ".join(item.options))
        choices = ", ".join(item.options)
    parts.append(f'Think it through, then end with "{answer_text("X").rstrip(".")}", where X is one of {choices}.')
    from medreason.template import system_messages

    return system_messages(system_prompt) + [{"role": "user", "content": "\n\n".join(parts)}]


def loglik_prompt(item: MCQItem) -> str:
    """The text log-likelihood mode scores each label after, in lm-eval's MedQA style: "Question: ...\\nA. ...
    \\nAnswer:" (for the bundled four-option items exactly the bundled lm-eval task's prompt); free labels are
    listed on one line; a context comes first."""
    lines = [f"Context: {item.context}"] if item.context else []
    lines.append(f"Question: {item.question}")
    if item.lettered:
        lines += [f"{label}. {text}" for label, text in item.options.items()]
    else:
        lines.append("Options: " + " / ".join(item.options))
    return "\n".join(lines) + "\nAnswer:"
