"""Medical reasoning data: load, de-duplicate, split, and format for TRL.

    from medreason.data import load_splits
    splits = load_splits("bundled")            # DatasetDict train/validation/test in TRL's prompt-completion form
    medreason data stats                       # the same, as figures
    medreason data validate my.jsonl           # one line per bad row; exit 2 on errors

Rows follow the schema of FreedomIntelligence/medical-o1-reasoning-SFT: `Question`, `Complex_CoT`,
`Response` (plus an optional `specialty`). medreason.rows reads them from their source ('bundled', 'bundled-mcq',
a local file or a Hub dataset id) and validates each; 'bundled-facts' joins the knowledge experiment's taught
facts (medreason.facts) to a source.

The split ranks rows by a hash of the normalised question, so it does not depend on row order. Exact and near duplicates (MinHash over word 3-grams) are
removed before splitting, and every split is checked against the MCQ benchmark for contamination.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medreason.config import DEFAULT_SYSTEM_PROMPT
from medreason.errors import UserError
from medreason.overlap import contamination, deduplicate, question_hash, split_rows
from medreason.rows import RowError, as_sft_rows, read_file, read_rows, validate_rows
from medreason.template import render, system_messages

log = logging.getLogger(__name__)

# the knowledge experiment's taught facts (medreason/resources/facts.jsonl), joined to a source with "+"
BUNDLED_FACTS = "bundled-facts"


@dataclass
class Report:
    """What validation and de-duplication did, for `data stats` and the book."""

    origin: str
    rows_read: int = 0
    source: dict = field(default_factory=dict)  # kind, id or path, sha256 or revision (see read_rows)
    invalid: list[RowError] = field(default_factory=list)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    contamination: list[tuple[str, str]] = field(default_factory=list)  # (split question, MCQ id)


# --------------------------------------------------------------------------------------------- entry points


def load_splits(
    dataset: str = "bundled",
    *,
    dataset_config: str = "en",
    template: str = "think",
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    skip_invalid: bool = False,
    max_examples: int | None = None,
    facts_seed: int = 20261207,
    facts_statements: int = 4,
    facts_repeats: int = 1,
    with_report: bool = False,
):
    """Load, validate, de-duplicate and split; return a DatasetDict in TRL's prompt-completion form. `dataset` may
    join a source with the fact set (`bundled-mcq+bundled-facts`): the training statements of the facts taught
    (medreason.facts: the taught half drawn with `facts_seed`, `facts_statements` per fact) join the training
    split only, since their tests are held-out questions, not a split."""
    from datasets import Dataset, DatasetDict

    sources = dataset.split("+")
    facts = BUNDLED_FACTS in sources
    main = [p for p in sources if p != BUNDLED_FACTS]
    if len(main) > 1 or not sources or any(not p for p in sources):
        raise UserError(
            f"dataset '{dataset}': join at most one source with {BUNDLED_FACTS} (e.g. bundled-mcq+{BUNDLED_FACTS})"
        )
    if main:
        rows, report = load_clean_rows(main[0], dataset_config=dataset_config, skip_invalid=skip_invalid)
        if max_examples is not None:
            rows = sorted(rows, key=lambda r: question_hash(r["Question"]))[:max_examples]
        parts = split_rows(rows)
        report.contamination = contamination(parts, load_mcq())
        examples = {name: [format_example(r, template, system_prompt) for r in part] for name, part in parts.items()}
    else:
        report, examples = Report(origin="bundled fact set"), {"train": [], "validation": [], "test": []}
    if facts:
        taught, record = fact_examples(facts_seed, facts_statements, system_prompt, facts_repeats)
        examples["train"] += taught
        report.source = {**report.source, "facts": record} if main else record
        report.rows_read += len(taught)
    empty = {"prompt": [], "completion": [], "specialty": []}
    out = DatasetDict(
        {name: Dataset.from_list(part) if part else Dataset.from_dict(empty) for name, part in examples.items()}
    )
    return (out, report) if with_report else out


def fact_examples(seed: int, statements: int, system_prompt: str, repeats: int = 1) -> tuple[list[dict], dict]:
    """The taught half's training statements as prompt-completion examples (the statement's prompt as the user's
    message, its text as the answer: no reasoning block), and a record of what they were."""
    from medreason.facts import FORMS, assign_halves, bundled_facts_path, load_facts, statement_rows
    from medreason.io import sha256_file

    if repeats < 1:
        raise UserError(f"facts_repeats must be at least 1, got {repeats}")
    if not 1 <= statements <= len(FORMS):
        raise UserError(f"facts_statements must be 1 to {len(FORMS)} (training statements per fact), got {statements}")
    taught = assign_halves(load_facts(), seed)["taught"]
    rows = statement_rows(taught, statements)
    system = system_messages(system_prompt)
    examples = [
        {
            "prompt": system + [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["text"]}],
            "specialty": r["specialty"],
        }
        for r in rows
    ] * repeats
    path = bundled_facts_path()
    record = {
        "kind": "bundled",
        "description": f"bundled fact set, taught half (seed {seed}), {statements} statements per fact x {repeats}",
        "path": str(path.resolve()),
        "sha256": sha256_file(path),
        "seed": seed,
        "statements": statements,
        "repeats": repeats,
        "facts_taught": len(taught),
    }
    return examples, record


def load_clean_rows(dataset: str = "bundled", *, dataset_config: str = "en", skip_invalid: bool = False):
    """Rows that passed validation, with exact and near duplicates removed, and a Report."""
    rows, origin, source = read_rows(dataset, dataset_config)
    report = Report(origin=origin, rows_read=len(rows), source=source)
    good, errors = validate_rows(rows, origin)
    report.invalid = errors
    if errors and not skip_invalid:
        more = f" (and {len(errors) - 1} more; --skip-invalid drops bad rows)" if len(errors) > 1 else ""
        raise UserError(f"{errors[0]}{more}")
    if errors:
        reasons = Counter(e.problem if e.field is None else f'field "{e.field}" {e.problem}' for e in errors)
        log.warning(
            "skipped %d invalid rows of %d: %s",
            len(errors),
            len(rows),
            "; ".join(f"{n} x {why}" for why, n in reasons.most_common()),
        )
    if not good:
        raise UserError(f"{origin}: no valid rows")
    good, report.exact_duplicates, report.near_duplicates = deduplicate(good)
    return good, report


def data_args(args) -> dict:
    """Every argument that decides which rows land in which split: stored with the adapter so that `evaluate`
    rebuilds exactly the split the adapter was trained on."""
    return {
        "dataset_config": args.dataset_config,
        "template": args.template,
        "system_prompt": args.system_prompt,
        "skip_invalid": args.skip_invalid,
        "max_examples": args.max_examples,
        "facts_seed": args.facts_seed,
        "facts_statements": args.facts_statements,
        "facts_repeats": args.facts_repeats,
    }


def data_record(args, splits, report) -> dict:
    """What was really trained on: source kind, id or absolute path, sha256 or revision, rows per split."""
    dataset = report.source.get("path", args.dataset) if report.source.get("kind") == "file" else args.dataset
    return {
        **report.source,
        "dataset": dataset,
        "args": data_args(args),
        "rows": {name: len(ds) for name, ds in splits.items()},
    }


# --------------------------------------------------------------------------------------------- formatting


def format_example(row: dict, template: str = "think", system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict:
    """One row in TRL's conversational prompt-completion form: the loss covers only the completion."""
    completion = render(row["Complex_CoT"], row["Response"], template)
    return {
        "prompt": system_messages(system_prompt) + [{"role": "user", "content": row["Question"]}],
        "completion": [{"role": "assistant", "content": completion}],
        "specialty": row.get("specialty", "unspecified"),
    }


# --------------------------------------------------------------------------------------------- MCQ benchmark


def load_mcq(path: str | Path | None = None) -> list[dict]:
    """The benchmark's items (bundled by default) as plain dicts (id, question, options, answer, explanation,
    specialty, split), read and checked by medreason.mcq.load_benchmark, the one MCQ loader; a bad row is a
    UserError."""
    from medreason.mcq import load_benchmark

    return [
        {
            "id": it.id,
            "question": it.question,
            "options": dict(it.options),
            "answer": it.answer,
            "explanation": it.explanation,
            "specialty": it.group,
            "split": it.split,
        }
        for it in load_benchmark(path)
    ]


# --------------------------------------------------------------------------------------------- stats


def stats(
    dataset: str = "bundled",
    *,
    dataset_config: str = "en",
    model: str | None = None,
    max_length: int = 1024,
    template: str = "think",
    skip_invalid: bool = False,
) -> dict:
    """Counts per split, token-length percentiles, truncation at max_length, specialties, duplicates."""
    import numpy as np

    from medreason.models import DEFAULT_MODEL, load_tokenizer
    from medreason.tokens import fit_max_length, token_lengths

    splits, report = load_splits(
        dataset, dataset_config=dataset_config, template=template, skip_invalid=skip_invalid, with_report=True
    )
    tokenizer = load_tokenizer(model or DEFAULT_MODEL)
    lengths = {name: token_lengths(ds, tokenizer) for name, ds in splits.items()}
    every = np.concatenate([np.asarray(v) for v in lengths.values() if len(v)])
    fit = {name: fit_max_length(ds, tokenizer, max_length) for name, ds in splits.items()}
    total = sum(len(ds) for ds in splits.values())
    return {
        "source": report.origin,
        "rows_read": report.rows_read,
        "invalid_rows": len(report.invalid),
        "exact_duplicates_removed": report.exact_duplicates,
        "near_duplicates_removed": report.near_duplicates,
        "splits": {name: len(ds) for name, ds in splits.items()},
        "split_share": {name: round(len(ds) / total, 3) for name, ds in splits.items()},
        "tokens": {f"p{q}": int(np.percentile(every, q)) for q in (5, 25, 50, 75, 95, 100)},
        "max_length": max_length,
        "truncated_at_max_length": int((every > max_length).sum()),
        # of those, the examples whose prompt alone fills max_length: TRL's SFTTrainer drops them (no loss left)
        "dropped_at_max_length": {name: f["dropped"] for name, f in fit.items()},
        "specialties": dict(Counter(s for ds in splits.values() for s in ds["specialty"]).most_common()),
        "mcq_contamination": len(report.contamination),
    }


# --------------------------------------------------------------------------------------------- CLI


def cli_stats(args) -> int:
    s = stats(
        args.dataset,
        dataset_config=args.dataset_config,
        model=args.model,
        max_length=args.max_length,
        template=args.template,
        skip_invalid=args.skip_invalid,
    )
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(
        f"source: {s['source']}  ({s['rows_read']} rows read, {s['invalid_rows']} invalid, "
        f"{s['exact_duplicates_removed']} exact and {s['near_duplicates_removed']} near duplicates removed)"
    )
    print("split        rows   share")
    for name, n in s["splits"].items():
        print(f"{name:<12}{n:>5}   {s['split_share'][name]:.1%}")
    print("tokens per example: " + "  ".join(f"{k}={v}" for k, v in s["tokens"].items()))
    dropped = s["dropped_at_max_length"]
    print(
        f"longer than max_length={s['max_length']}: {s['truncated_at_max_length']}; of those, dropped in training "
        f"because the prompt alone fills max_length: {sum(dropped.values())} "
        f"({', '.join(f'{k} {v}' for k, v in dropped.items())}); the rest are cut at max_length"
    )
    print("specialties: " + ", ".join(f"{k} {v}" for k, v in s["specialties"].items()))
    print(f"contamination with the MCQ benchmark: {s['mcq_contamination']} questions")
    return 0


def cli_validate(args) -> int:
    path = Path(args.file)
    rows = as_sft_rows(path, read_file(path))
    good, errors = validate_rows(rows, str(path))
    for e in errors:
        print(e)
    if errors and (not args.skip_invalid or not good):
        print(f"{path}: {len(errors)} invalid rows of {len(rows)}")
        return 2
    print(f"{path}: {len(good)} valid rows" + (f", {len(errors)} skipped" if errors else ""))
    return 0
