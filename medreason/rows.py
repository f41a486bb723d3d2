"""Training rows of the medical-o1 schema: read from their source, then checked field by field.

    from medreason.rows import read_rows, validate_rows
    rows, origin, source = read_rows("bundled")        # raw rows, where they came from, and its sha256 or revision
    good, errors = validate_rows(rows, origin)         # stripped rows, and one RowError per bad row
    print(errors[0])                                   # 'my.jsonl line 6: field "Response" is empty'

Rows follow the schema of FreedomIntelligence/medical-o1-reasoning-SFT: `Question`, `Complex_CoT`, `Response`
(plus an optional `specialty`). Sources: 'bundled' (the corpus shipped in medreason/resources), 'bundled-mcq'
(the shipped multiple-choice items with short worked reasoning, rendered as the evaluation prompts them), a local
JSON/JSONL/CSV/Parquet file (medical-o1 rows, or MCQ rows with `reasoning`), or a Hub dataset id (when the Hub is
reachable). File formats are medreason.readers'; de-duplication, the split and the chat format are medreason.data's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medreason.errors import UserError
from medreason.readers import READERS, Unparseable, bundled_path, positions
from medreason.readers import read_file as read_rows_file
from medreason.readers import where as where_in_file

log = logging.getLogger(__name__)

# the Hub dataset whose schema the rows follow (the GPU recipes train on it)
HUB_DATASET = "FreedomIntelligence/medical-o1-reasoning-SFT"
FIELDS = ("Question", "Complex_CoT", "Response")
# Limits in characters: far beyond any real exam item, short enough to catch a file read wrongly
# (a whole CSV in one cell) or a placeholder.
MIN_CHARS = {"Question": 10, "Complex_CoT": 20, "Response": 2}
MAX_CHARS = {"Question": 8_000, "Complex_CoT": 40_000, "Response": 12_000}
# The CPU curriculum's SFT set: multiple-choice items with short worked reasoning (see DATASHEET.md)
BUNDLED_MCQ = "bundled-mcq"
MCQ_REASONING_FILE = "mcq_reasoning.jsonl"
# the answer letters of its items (tests/test_benchmark_data.py checks their balance)
MCQ_LETTERS = ("A", "B", "C", "D")


@dataclass
class RowError:
    origin: str
    row: int  # 1-based: a medreason.readers.Position, which says the line an editor shows
    field: str | None
    problem: str

    def __str__(self) -> str:
        where = f"{self.origin} {where_in_file(self.row)}"  # "line 6", as an editor counts (medreason.readers)
        return f'{where}: field "{self.field}" {self.problem}' if self.field else f"{where}: {self.problem}"


# --------------------------------------------------------------------------------------------- reading


def read_rows(dataset: str, dataset_config: str = "en") -> tuple[list, str, dict]:
    """(raw rows, origin, source) from 'bundled', a local file, or a Hub dataset id. `source` records what was
    really read: kind, id or absolute path, and a sha256 of the file or the Hub revision. A Hub dataset that
    cannot be reached is an error, never silently replaced by other data."""
    if dataset == "bundled":
        path = bundled_path("corpus.jsonl")
        return read_file(path), "bundled corpus", _file_source("bundled", path)
    if dataset == BUNDLED_MCQ:
        path = bundled_path(MCQ_REASONING_FILE)
        return mcq_reasoning_rows(path), "bundled MCQ reasoning set", _file_source("bundled", path)
    path = Path(dataset).expanduser()
    if path.suffix.lower() in READERS or path.exists():
        return as_sft_rows(path, read_file(path)), str(path), _file_source("file", path)
    from medreason.models import hub_reachable

    if not hub_reachable():
        raise UserError(
            f"dataset '{dataset}' is on the Hugging Face Hub, which is unreachable here: pass "
            f"--dataset bundled (the corpus shipped with medreason) or a local JSON/JSONL/CSV/Parquet file"
        )
    from datasets import load_dataset

    ds = load_dataset(dataset, dataset_config, split="train")
    source = {"kind": "hub", "id": dataset, "config": dataset_config, "revision": _hub_revision(dataset)}
    return ds.to_list(), f"{dataset} ({dataset_config})", source


def _file_source(kind: str, path: Path) -> dict:
    from medreason.io import sha256_file

    return {"kind": kind, "path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def _hub_revision(dataset: str) -> str | None:
    """The commit the Hub serves for `dataset` now (what load_dataset just read)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset).sha
    except Exception as e:  # the data loaded; only the revision lookup failed: say so, record none
        log.warning("could not look up the Hub revision of %s (%s): recording none", dataset, type(e).__name__)
        return None


def read_file(path: Path) -> list:
    """The rows of a JSON/JSONL/CSV/Parquet file of the medical-o1 schema (medreason.readers; a CSV's header must
    name its columns); an unparseable line stays in place as a row that validation reports."""
    return read_rows_file(path, csv_header=_csv_header_problem)


def _csv_header_problem(header: list[str]) -> str | None:
    if not set(FIELDS) & set(header):
        return f"not a CSV with a header row naming {', '.join(FIELDS)}"
    return None


def as_sft_rows(path: Path, rows: list) -> list:
    """Rows of the medical-o1 schema as they are; a file of MCQ items with `reasoning` (its first row has
    `options` and `reasoning`) converted by mcq_reasoning_rows."""
    if rows and isinstance(rows[0], dict) and {"options", "reasoning"} <= set(rows[0]):
        return mcq_reasoning_rows(path, rows)
    return rows


def mcq_reasoning_rows(path: Path, rows: list | None = None) -> list[dict]:
    """Multiple-choice items with a short worked reasoning (`question`, `options`, `answer`, `reasoning`, and
    optional `specialty`, `id`) as rows of the medical-o1 schema, so that SFT teaches exactly what generate-mode
    evaluation asks for: `Question` is the user message that evaluation and GRPO send (medreason.mcq.prompt_messages:
    the question, its options and "end with The answer is X"), `Complex_CoT` the reasoning, and `Response`
    "The answer is X." `stem` keeps the bare question for the contamination check. A bad row is a UserError naming it."""
    from medreason.mcq import answer_text, parse_row, prompt_messages

    out = []
    rows = read_file(path) if rows is None else rows
    for n, row in zip(positions(rows), rows):
        item = parse_row(row, n, path)
        reasoning = row.get("reasoning")
        if not isinstance(reasoning, str) or not reasoning.strip():
            missing = "missing" if reasoning is None else "empty"
            raise UserError(f'{path} {where_in_file(n)}: field "reasoning" is {missing}')
        out.append(
            {
                "Question": prompt_messages(item, None)[0]["content"],
                "Complex_CoT": reasoning.strip(),
                "Response": answer_text(item.answer),
                "specialty": item.group,
                "stem": item.question,
            }
        )
    return out


# --------------------------------------------------------------------------------------------- validation


def validate_rows(rows: list, origin: str) -> tuple[list[dict], list[RowError]]:
    """Split rows into valid ones (stripped strings) and one RowError per invalid row."""
    good, errors = [], []
    for n, row in zip(positions(rows), rows):  # each row's line in its file
        error = validate_row(row, n, origin)
        if error:
            errors.append(error)
        else:
            clean = {k: row[k].strip() for k in FIELDS}
            clean["specialty"] = str(row.get("specialty") or "unspecified").strip()
            if isinstance(row.get("stem"), str):  # the bare question of an MCQ reasoning row (mcq_reasoning_rows)
                clean["stem"] = row["stem"]
            good.append(clean)
    return good, errors


def validate_row(row, n: int, origin: str) -> RowError | None:
    if isinstance(row, Unparseable):
        return RowError(origin, row.line, None, row.problem)
    if not isinstance(row, dict):
        return RowError(origin, n, None, f"is a {type(row).__name__}, not an object with {', '.join(FIELDS)}")
    for name in FIELDS:
        if name not in row:
            return RowError(origin, n, name, "is missing")
        value = row[name]
        if value is None:
            return RowError(origin, n, name, "is null")
        if not isinstance(value, str):
            return RowError(origin, n, name, f"is a {type(value).__name__}, not text")
        text = value.strip()
        if not text:
            return RowError(origin, n, name, "is empty")
        if len(text) < MIN_CHARS[name]:
            return RowError(origin, n, name, f"is too short ({len(text)} characters, at least {MIN_CHARS[name]})")
        if len(text) > MAX_CHARS[name]:
            return RowError(origin, n, name, f"is too long ({len(text)} characters, at most {MAX_CHARS[name]})")
    return None
