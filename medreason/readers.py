"""Reading rows from a user's file, in one place: JSON Lines, JSON, CSV and Parquet, each failure one line naming
the file and what is wrong with it.

    from medreason.readers import read_file
    rows = read_file(Path("data/train.jsonl"))     # list of dicts; an unparseable line is an `Unparseable` row
    rows = read_file(Path("items.csv"), csv_header=check)   # check(header) -> problem or None

An unparseable JSONL line, or a CSV row with more cells than its header, stays in place as an `Unparseable` row
(its line and problem), so that validation reports it with the other bad rows by position. The callers
(medreason.data for training rows, medreason.mcq for benchmark items) validate the rows' fields.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medreason.errors import UserError


def bundled_path(name: str) -> Path:
    """A file shipped inside the package (medreason/resources/)."""
    return Path(str(resources.files("medreason") / "resources" / name))


@dataclass
class Unparseable:
    line: int
    problem: str


def read_file(path: Path, csv_header: Callable[[list[str]], str | None] | None = None) -> list:
    """Rows of a .jsonl, .json, .csv or .parquet file. `csv_header`: checks a CSV's header (stripped names) and
    returns what is wrong with it, or None."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .json, .csv or .parquet)")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")
    if reader is read_csv:
        return read_csv(path, csv_header)
    return reader(path)


def read_csv(path: Path, header_problem: Callable[[list[str]], str | None] | None = None) -> list:
    """A CSV with a header row: one dict per row, keys stripped of spaces."""
    reader = csv.DictReader(io.StringIO(read_text(path)))
    header = [h.strip() for h in reader.fieldnames or []]
    problem = header_problem(header) if header_problem else (None if header else "no header row")
    if problem:
        raise UserError(f"{path}: {problem}")
    rows = []
    for raw in reader:
        if None in raw:  # more cells than header columns
            rows.append(Unparseable(len(rows) + 1, "has more cells than the header"))
        else:
            rows.append({k.strip(): v for k, v in raw.items()})
    return rows


def _read_jsonl(path: Path) -> list:
    rows = []
    for line in read_text(path).splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            # keep the row's position: validation reports it with the others
            rows.append(Unparseable(len(rows) + 1, f"not valid JSON ({e.msg})"))
    return rows


def _read_json(path: Path) -> list:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); for one object per line use .jsonl") from e
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}, as some exports write
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of rows")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of rows")
    return data


def _read_parquet(path: Path) -> list:
    with open(path, "rb") as f:
        if f.read(4) != b"PAR1":
            raise UserError(f"{path}: not a Parquet file (its first bytes are not the Parquet magic)")
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's own errors for a truncated or corrupt file
        raise UserError(f"{path}: unreadable Parquet file ({str(e).splitlines()[0]})") from e


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:4] == b"PAR1" or b"\x00" in data[:1024]:
        raise UserError(f"{path}: binary content, not text as its extension '{path.suffix}' says")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from e


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": read_csv, ".parquet": _read_parquet}
