"""Reading rows from a user's file, in one place: JSON Lines, JSON, CSV and Parquet, each failure one line naming
the file and what is wrong with it.

    from medreason.readers import read_file
    rows = read_file(Path("data/train.jsonl"))     # list of dicts; an unparseable line is an `Unparseable` row
    rows = read_file(Path("items.csv"), csv_header=check)   # check(header) -> problem or None

An unparseable JSONL line, or a CSV row with more cells than its header, stays in place as an `Unparseable` row
(its line and problem), so that validation reports it with the other bad rows by position. The callers
(medreason.rows for training rows, medreason.mcq for benchmark items) validate the rows' fields.
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
from medreason.guards import check_fits_in_memory


def bundled_path(name: str) -> Path:
    """A file shipped inside the package (medreason/resources/)."""
    return Path(str(resources.files("medreason") / "resources" / name))


class Position(int):
    """Where a row is in its file: the int is the row's number (1-based, in records, as ids such as `row-3` count);
    `line` is the line an editor shows it on (JSONL, JSON, CSV; None for Parquet). `where` says it for a person:
    "line 6" when the line is known, else "row 3"."""

    line: int | None

    def __new__(cls, record: int, line: int | None = None):
        obj = super().__new__(cls, record)
        obj.line = line
        return obj

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"row {int(self)}"


def where(n: int) -> str:
    """'line 6' for a Position with a line, else 'row N'."""
    return n.where if isinstance(n, Position) else f"row {n}"


class Rows(list):
    """The rows of a file, with the Position of each (`positions(rows)`)."""

    def __init__(self, rows=(), positions=None):
        super().__init__(rows)
        self.positions = list(positions) if positions is not None else None


def positions(rows) -> list[Position]:
    """The Position of each row: from the file when `rows` came from `read_file`, else the row numbers."""
    found = getattr(rows, "positions", None)
    if found is not None and len(found) == len(rows):
        return found
    return [Position(n) for n in range(1, len(rows) + 1)]


@dataclass
class Unparseable:
    line: int  # a Position
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
    check_fits_in_memory(path)  # read whole: a file beyond the free memory is refused with its size
    if reader is read_csv:
        return read_csv(path, csv_header)
    return reader(path)


def read_csv(path: Path, header_problem: Callable[[list[str]], str | None] | None = None) -> list:
    """A CSV with a header row: one dict per row, keys stripped of spaces; each row's Position is the line its
    record starts on (a quoted cell may span lines)."""
    lines = _Lines(read_text(path))
    reader = csv.DictReader(lines)
    header = [h.strip() for h in reader.fieldnames or []]
    problem = header_problem(header) if header_problem else (None if header else "no header row")
    if problem:
        raise UserError(f"{path}: {problem}")
    rows = Rows(positions=[])
    while True:
        lines.first = None
        try:
            raw = next(reader)
        except StopIteration:
            break
        at = Position(len(rows) + 1, lines.first)
        rows.positions.append(at)
        if None in raw:  # more cells than header columns
            rows.append(Unparseable(at, "has more cells than the header"))
        else:
            rows.append({k.strip(): v for k, v in raw.items()})
    return rows


class _Lines:
    """The lines of a text for the csv reader, remembering the number of the first non-blank line it handed out
    since `first` was reset: where the next record starts."""

    def __init__(self, text: str):
        self._lines = iter(io.StringIO(text))
        self.n = 0
        self.first: int | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.n += 1
        if self.first is None and line.strip():
            self.first = self.n
        return line


def _read_jsonl(path: Path) -> list:
    rows = Rows(positions=[])
    for n, line in enumerate(read_text(path).split("\n"), 1):  # "\n" only: the lines an editor numbers
        if not line.strip():
            continue
        at = Position(len(rows) + 1, n)
        rows.positions.append(at)
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            # keep the row's position: validation reports it with the others
            rows.append(Unparseable(at, f"not valid JSON ({e.msg})"))
    return rows


def _read_json(path: Path) -> list:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); for one object per line use .jsonl") from e
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}, as some exports write
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of rows")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of rows")
    return Rows(data, _element_lines(text, len(data)))


def _element_lines(text: str, n: int) -> list[Position] | None:
    """The line each element of a top-level JSON list starts on (None for a list inside an object)."""
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        return None
    i, line, found = i + 1, text.count("\n", 0, i) + 1, []
    while len(found) < n:
        while text[i] in " \t\r\n,":
            line += text[i] == "\n"
            i += 1
        found.append(Position(len(found) + 1, line))
        _, end = decoder.raw_decode(text, i)
        line += text.count("\n", i, end)
        i = end
    return found


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
    """A text file's content, named in one line when it is binary, not UTF-8, or larger than the free memory."""
    path = Path(path)
    check_fits_in_memory(path)
    data = path.read_bytes()
    if data[:4] == b"PAR1" or b"\x00" in data[:1024]:
        raise UserError(f"{path}: binary content, not text as its extension '{path.suffix}' says")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from e


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": read_csv, ".parquet": _read_parquet}
