"""Tests of medreason/data.py: reading and validating files, de-duplication, the split, contamination,
the bundled corpus and MCQ benchmark, the prompt-completion format, and which tokens TRL trains on.

Everything here runs offline in a few seconds, except the tests that load the real SmolLM2 tokenizer
(chat-template golden, label masking through SFTTrainer, `data stats`), which take a few seconds more.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from medreason import data, overlap
from medreason.cli import main
from medreason.config import DEFAULT_SYSTEM_PROMPT
from medreason.errors import UserError
from medreason.readers import bundled_path
from medreason.rows import read_file, validate_rows
from medreason.text import normalize

FIELDS = ("Question", "Complex_CoT", "Response")
DATASHEET = Path(data.__file__).parent / "resources" / "DATASHEET.md"

GOOD = {
    "Question": "A 30-year-old woman has fatigue and pallor. What is the most likely cause?",
    "Complex_CoT": "Fatigue and pallor in a young woman suggest anaemia; menstrual loss makes iron deficiency likely.",
    "Response": "Iron deficiency anaemia.",
    "specialty": "Hematology",
}


def good(i: int = 0, **changes) -> dict:
    """A valid row with a distinct question (so de-duplication keeps it), changed as asked."""
    row = dict(GOOD, Question=f"Case {i}: {GOOD['Question']} Variant number {i} of the teaching set.")
    row.update(changes)
    return row


def without(key: str) -> dict:
    return {k: v for k, v in good(1).items() if k != key}


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_csv(path: Path, rows: list[dict], header=("Question", "Complex_CoT", "Response", "specialty")) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(k, "") for k in header] if isinstance(r, dict) else r)


def message(path) -> str:
    with pytest.raises(UserError) as e:
        data.load_clean_rows(str(path))
    return str(e.value)


# --------------------------------------------------------------------------------------------- bad input


def _jsonl(rows):
    return lambda p: write_jsonl(p, rows)


def _text(text: str):
    return lambda p: p.write_text(text, encoding="utf-8")


def _bytes(raw: bytes):
    return lambda p: p.write_bytes(raw)


def _parquet_bytes(p: Path):
    import pandas as pd

    pd.DataFrame([good(0), good(1)]).to_parquet(p)


# (id, file name, how to write it (None: do not create it), expected message with {path} for the file)
BAD_INPUTS = [
    (
        "missing-column",
        "bad.jsonl",
        _jsonl([good(0), without("Response")]),
        '{path} line 2: field "Response" is missing',
    ),
    ("empty-field", "bad.jsonl", _jsonl([good(0), good(1, Response="")]), '{path} line 2: field "Response" is empty'),
    (
        "whitespace-field",
        "bad.jsonl",
        _jsonl([good(0), good(1), good(2, Complex_CoT=" \t\n  ")]),
        '{path} line 3: field "Complex_CoT" is empty',
    ),
    ("null-field", "bad.jsonl", _jsonl([good(0, Question=None)]), '{path} line 1: field "Question" is null'),
    (
        "number-field",
        "bad.jsonl",
        _jsonl([good(0), good(1, Response=42)]),
        '{path} line 2: field "Response" is a int, not text',
    ),
    (
        "list-field",
        "bad.jsonl",
        _jsonl([good(0), good(1, Complex_CoT=["step one", "step two"])]),
        '{path} line 2: field "Complex_CoT" is a list, not text',
    ),
    (
        "too-short",
        "bad.jsonl",
        _jsonl([good(0), good(1, Response="A")]),
        '{path} line 2: field "Response" is too short (1 characters, at least 2)',
    ),
    (
        "too-long",
        "bad.jsonl",
        _jsonl([good(0, Question="why " * 2500)]),
        '{path} line 1: field "Question" is too long (9999 characters, at most 8000)',
    ),
    (
        "row-is-a-list",
        "bad.jsonl",
        _jsonl([good(0), ["a question", "a chain of thought", "an answer"]]),
        "{path} line 2: is a list, not an object with Question, Complex_CoT, Response",
    ),
    (
        "invalid-json-line",
        "bad.jsonl",
        _text(json.dumps(good(0)) + '\n{"Question": "unterminated\n'),
        "{path} line 2: not valid JSON (Unterminated string starting at)",
    ),
    (
        "json-not-json",
        "bad.json",
        _text('[{"Question": "x",'),
        "{path}: not valid JSON (line 1: Expecting property name enclosed in double quotes); "
        "for one object per line use .jsonl",
    ),
    (
        "json-top-level-object",
        "bad.json",
        _text(json.dumps({"Question": "q", "Response": "r"})),
        "{path}: expected a JSON list of rows",
    ),
    ("json-top-level-string", "bad.json", _text('"just a string"'), "{path}: expected a JSON list of rows"),
    (
        "parquet-that-is-text",
        "bad.parquet",
        _text("Question,Complex_CoT,Response\n"),
        "{path}: not a Parquet file (its first bytes are not the Parquet magic)",
    ),
    (
        "parquet-truncated",
        "bad.parquet",
        _bytes(b"PAR1 then nothing that pyarrow can read"),
        "{path}: unreadable Parquet file (",
    ),
    (
        "jsonl-that-is-parquet",
        "bad.jsonl",
        _parquet_bytes,
        "{path}: binary content, not text as its extension '.jsonl' says",
    ),
    (
        "jsonl-with-nul-bytes",
        "bad.jsonl",
        _bytes(b"\x00\x01\x02binary\x00"),
        "{path}: binary content, not text as its extension '.jsonl' says",
    ),
    (
        "unsupported-extension",
        "bad.txt",
        _text("Question: what?\n"),
        "{path}: unsupported file type '.txt' (use .jsonl, .json, .csv or .parquet)",
    ),
    ("empty-file", "bad.jsonl", _text(""), "{path}: file is empty"),
    ("missing-file", "absent.jsonl", None, "{path}: file not found"),
    (
        "csv-without-header",
        "bad.csv",
        _text("q,cot,answer\nwhat?,because,this\n"),
        "{path}: not a CSV with a header row naming Question, Complex_CoT, Response",
    ),
    (
        "csv-extra-cells",
        "bad.csv",
        lambda p: write_csv(
            p, [good(0), [good(1)["Question"], GOOD["Complex_CoT"], "An answer", "Hematology", "extra"]]
        ),
        "{path} line 3: has more cells than the header",  # line 1 is the header
    ),
    (
        "not-utf8",
        "bad.jsonl",
        _bytes(json.dumps(good(0), ensure_ascii=False).replace("anaemia", "an\u00e6mia").encode("latin-1")),
        "{path}: not UTF-8 text (byte ",
    ),
]


@pytest.mark.parametrize("name, write, expected", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_problem(tmp_path, name, write, expected):
    path = tmp_path / name
    if write is not None:
        write(path)
    text = message(path)
    assert expected.format(path=path) in text
    assert "\n" not in text


def test_the_table_covers_enough_kinds_of_bad_input():
    assert len({c[0] for c in BAD_INPUTS}) == len(BAD_INPUTS) >= 14


def test_validate_rows_reports_every_bad_row_and_strips_the_good_ones():
    rows = [good(0, Question="  " + good(0)["Question"] + "\n"), good(1, Response=None), 7, without("Question")]
    clean, errors = validate_rows(rows, "t.jsonl")
    assert [str(e) for e in errors] == [
        't.jsonl row 2: field "Response" is null',  # rows that come from no file: counted as rows
        "t.jsonl row 3: is a int, not an object with Question, Complex_CoT, Response",
        't.jsonl row 4: field "Question" is missing',
    ]
    assert clean == [{**{k: good(0)[k] for k in FIELDS}, "specialty": "Hematology"}]


def test_missing_specialty_becomes_unspecified():
    clean, errors = validate_rows([without("specialty")], "t.jsonl")
    assert not errors and clean[0]["specialty"] == "unspecified"


def test_first_error_says_how_many_more(tmp_path):
    path = tmp_path / "two-bad.jsonl"
    write_jsonl(path, [good(0), good(1, Response=""), good(2, Question=None), good(3, Response=3)])
    assert message(path) == f'{path} line 2: field "Response" is empty (and 2 more; --skip-invalid drops bad rows)'


def test_skip_invalid_drops_bad_rows_and_reports_them(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [good(0), good(1, Response=""), good(2), ["not", "a", "row"], good(4)])
    rows, report = data.load_clean_rows(str(path), skip_invalid=True)
    assert [r["Question"] for r in rows] == [good(i)["Question"] for i in (0, 2, 4)]
    assert report.rows_read == 5
    assert [(e.row, e.field) for e in report.invalid] == [(2, "Response"), (4, None)]


def test_skip_invalid_with_no_good_row_is_an_error(tmp_path):
    path = tmp_path / "all-bad.jsonl"
    write_jsonl(path, [good(0, Response=""), good(1, Question=None)])
    with pytest.raises(UserError, match=r"all-bad.jsonl: no valid rows$"):
        data.load_clean_rows(str(path), skip_invalid=True)


def test_jsonl_positions_are_the_lines_an_editor_shows(tmp_path):
    """issue 32: positions counted records, so after blank lines "row 3" was on line 6."""
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(good(0)) + "\n\n" + json.dumps(good(2, Response="")) + "\n{broken\n")
    errors = validate_rows(read_file(path), "gaps.jsonl")[1]
    assert [str(e) for e in errors] == [
        'gaps.jsonl line 3: field "Response" is empty',
        "gaps.jsonl line 4: not valid JSON (Expecting property name enclosed in double quotes)",
    ]


def test_csv_positions_are_the_line_a_record_starts_on(tmp_path):
    """A CSV record with a multi-line cell spans lines: the next record is named by the line it starts on."""
    path = tmp_path / "multiline.csv"
    multiline = good(0, Complex_CoT="First step of the reasoning.\nSecond step.\nThird step, so the answer.")
    write_csv(path, [multiline, [good(1)["Question"], GOOD["Complex_CoT"], "An answer", "Hematology", "extra"]])
    assert message(path) == f"{path} line 5: has more cells than the header"


def test_csv_field_error_after_a_multiline_cell_names_its_line(tmp_path):
    path = tmp_path / "multiline.csv"
    multiline = good(0, Complex_CoT="First step of the reasoning.\nSecond step.\nThird step, so the answer.")
    write_csv(path, [multiline, good(1, Response="")])
    assert message(path) == f'{path} line 5: field "Response" is empty'


def test_json_positions_are_the_line_an_element_starts_on(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n  " + json.dumps(good(0), indent=2) + ",\n\n  " + json.dumps(good(1, Response="")) + "\n]\n")
    first_lines = 2 + json.dumps(good(0), indent=2).count("\n")
    assert message(path) == f'{path} line {first_lines + 2}: field "Response" is empty'


def test_parquet_positions_are_rows(tmp_path):
    import pandas as pd

    path = tmp_path / "rows.parquet"
    pd.DataFrame([good(0), good(1, Response="")]).to_parquet(path)
    assert message(path) == f'{path} row 2: field "Response" is empty'


# --------------------------------------------------------------------------------------------- the CLI


def test_cli_validate_bad_file_exits_2_naming_row_and_field(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [good(0), good(1), good(2, Response="   ")])
    assert main(["data", "validate", str(path)]) == 2
    out = capsys.readouterr().out
    assert f'{path} line 3: field "Response" is empty\n' in out
    assert f"{path}: 1 invalid rows of 3" in out


def test_cli_validate_good_file_exits_0(tmp_path, capsys):
    path = tmp_path / "good.jsonl"
    write_jsonl(path, [good(0), good(1)])
    assert main(["data", "validate", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: 2 valid rows"


def test_cli_validate_skip_invalid_exits_0_when_some_rows_are_good(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [good(0), good(1, Question=None)])
    assert main(["data", "validate", "--skip-invalid", str(path)]) == 0
    out = capsys.readouterr().out
    assert f'{path} line 2: field "Question" is null' in out and f"{path}: 1 valid rows, 1 skipped" in out


def test_cli_validate_unreadable_file_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "absent.csv"
    assert main(["data", "validate", str(path)]) == 2
    assert capsys.readouterr().err == f"medreason: error: {path}: file not found\n"


# --------------------------------------------------------------------------------------------- file formats


@pytest.fixture(scope="module")
def sample_rows():
    """Thirty bundled rows: real text with commas, quotes, units and unicode."""
    rows = [json.loads(line) for line in bundled_path("corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows[::7][:30]


def _write_format(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    kind = path.name.split(".", 1)[1]
    if kind == "jsonl":
        write_jsonl(path, rows)
    elif kind == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif kind == "wrapped.json":  # {"train": [...]}, as some exports write
        path.write_text(json.dumps({"train": rows}), encoding="utf-8")
    elif kind == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif kind == "parquet":
        pd.DataFrame(rows).to_parquet(path, engine="pyarrow")


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.wrapped.json", "rows.csv", "rows.parquet"])
def test_every_format_loads_the_same_rows(tmp_path, sample_rows, name):
    path = tmp_path / name
    _write_format(path, sample_rows)
    rows, report = data.load_clean_rows(str(path))
    assert report.rows_read == len(sample_rows) and not report.invalid
    assert rows == [{k: r[k] for k in (*FIELDS, "specialty")} for r in sample_rows]


def test_csv_with_a_byte_order_mark_loads(tmp_path, sample_rows):
    path = tmp_path / "bom.csv"
    _write_format(path, sample_rows[:3])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [r["Question"] for r in data.load_clean_rows(str(path))[0]] == [r["Question"] for r in sample_rows[:3]]


# --------------------------------------------------------------------------------------------- split


@pytest.fixture(scope="module")
def corpus_rows():
    return data.load_clean_rows("bundled")[0]


def _membership(parts: dict) -> dict[str, set[str]]:
    return {name: {r["Question"] for r in rows} for name, rows in parts.items()}


def test_split_does_not_depend_on_row_order(corpus_rows):
    reference = _membership(overlap.split_rows(corpus_rows))
    for seed in range(3):
        shuffled = corpus_rows[:]
        random.Random(seed).shuffle(shuffled)
        assert shuffled != corpus_rows
        assert _membership(overlap.split_rows(shuffled)) == reference


def test_split_has_no_question_in_two_parts_and_loses_none(corpus_rows):
    parts = _membership(overlap.split_rows(corpus_rows))
    assert not (
        parts["train"] & parts["validation"] or parts["train"] & parts["test"] or parts["validation"] & parts["test"]
    )
    assert set.union(*parts.values()) == {r["Question"] for r in corpus_rows}


@pytest.mark.parametrize("n", [10, 37, 100, 216, 1001])
def test_split_shares_are_80_10_10_within_one_row(n):
    rows = [good(i) for i in range(n)]
    parts = overlap.split_rows(rows)
    assert list(parts) == ["train", "validation", "test"]
    assert sum(len(p) for p in parts.values()) == n
    for name, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(len(parts[name]) - share * n) <= 1, (name, len(parts[name]), n)


def test_split_ignores_case_and_punctuation_of_the_question():
    rows = [good(i, Response=f"Answer number {i}.") for i in range(50)]
    shouted = [dict(r, Question=r["Question"].upper().replace(".", " ! ")) for r in rows]
    assert [[r["Response"] for r in p] for p in overlap.split_rows(rows).values()] == [
        [r["Response"] for r in p] for p in overlap.split_rows(shouted).values()
    ]
    assert [overlap.question_hash(r["Question"]) for r in rows] == [
        overlap.question_hash(r["Question"]) for r in shouted
    ]


# --------------------------------------------------------------------------------------------- duplicates

LONG_QUESTION = (
    "A 58-year-old man with a long history of heavy alcohol use is brought to the emergency department after "
    "two days of confusion, unsteady gait and double vision. His wife says that he has eaten very little for "
    "several weeks and has vomited repeatedly. On examination he is disoriented to time and place, has "
    "horizontal nystagmus with bilateral lateral rectus weakness, and walks with a wide-based ataxic gait. "
    "Blood glucose is 4.1 mmol/L and the serum sodium is normal. Which treatment should be given first?"
)


def test_deduplicate_removes_exact_and_near_duplicates_and_keeps_distinct_questions(corpus_rows):
    base = dict(good(0), Question=LONG_QUESTION)
    # two words changed in an 84-word question: still the same item
    near = dict(
        base,
        Question=LONG_QUESTION.replace("wife", "daughter").replace("several weeks", "several months"),
        Response="Intravenous thiamine first.",
    )
    distinct = corpus_rows[:5]
    rows = [base, *distinct, dict(base), near]
    kept, exact, near_count = overlap.deduplicate(rows)
    assert (exact, near_count) == (1, 1)
    assert kept == [base, *distinct]


def _edited(question: str, low: float, high: float) -> str | None:
    """`question` with evenly spaced words replaced until its word-3-gram Jaccard with the original falls
    below `high`; None if that overshoots below `low`."""
    words = question.split()
    for k in range(1, len(words)):
        changed = {int(i * len(words) / (k + 1)) for i in range(1, k + 1)}
        edited = " ".join("altered" if i in changed else w for i, w in enumerate(words))
        similarity = overlap.jaccard(question, edited)
        if similarity < high:
            return edited if similarity >= low else None
    return None


def test_deduplicate_removes_every_pair_at_or_above_the_threshold(corpus_rows):
    low, high = overlap.NEAR_DUP_THRESHOLD, overlap.NEAR_DUP_THRESHOLD + 0.06
    pairs = [(r, _edited(r["Question"], low, high)) for r in corpus_rows[:40]]
    pairs = [(r, q) for r, q in pairs if q is not None]
    assert len(pairs) >= 30
    for r, q in pairs:
        assert overlap.jaccard(r["Question"], q) >= overlap.NEAR_DUP_THRESHOLD
    missed = [
        q for r, q in pairs if overlap.deduplicate([r, dict(r, Question=q, Response="A different answer.")])[2] != 1
    ]
    assert not missed, f"{len(missed)} of {len(pairs)} near duplicates kept, e.g. {missed[0]!r}"


def test_deduplicate_counts_case_and_spacing_variants_as_exact():
    a = good(0)
    b = dict(a, Question="  " + a["Question"].upper(), Response=a["Response"].lower() + "  ")
    kept, exact, near = overlap.deduplicate([a, b])
    assert kept == [a] and (exact, near) == (1, 0)


def test_deduplicate_keeps_questions_that_only_share_a_stem():
    stem = "A 45-year-old woman presents to clinic with three months of symptoms. "
    endings = [
        "She has weight loss, heat intolerance, tremor and a diffuse goitre; what is the cause?",
        "She has joint pain in both hands with morning stiffness lasting two hours; which test?",
        "She has episodic headaches, palpitations and sweating with severe hypertension; next step?",
    ]
    rows = [good(i, Question=stem + ending) for i, ending in enumerate(endings)]
    kept, exact, near = overlap.deduplicate(rows)
    assert kept == rows and (exact, near) == (0, 0)


def test_bundled_corpus_has_no_exact_or_near_duplicates():
    _, report = data.load_clean_rows("bundled")
    assert report.rows_read == 216
    assert (report.exact_duplicates, report.near_duplicates) == (0, 0)


# --------------------------------------------------------------------------------------------- contamination


@pytest.fixture(scope="module")
def mcq():
    return data.load_mcq()


def test_planted_mcq_question_is_found(corpus_rows, mcq):
    item = mcq[17]
    planted = good(0, Question=item["question"])
    parts = overlap.split_rows(corpus_rows[:40])
    parts["validation"] = parts["validation"] + [planted]
    assert overlap.contamination(parts, mcq) == [("validation", item["id"])]


def test_lightly_edited_mcq_question_is_found(corpus_rows, mcq):
    item = mcq[80]
    words = item["question"].split()
    words[len(words) // 2] = "notably"
    edited = good(0, Question=" ".join(words).upper())
    assert overlap.contamination({"train": corpus_rows[:20] + [edited], "test": []}, mcq) == [("train", item["id"])]


def test_contamination_finds_every_question_at_or_above_the_threshold(mcq):
    edited = [(m["id"], _edited(m["question"], 0.5, 0.6)) for m in mcq[:40]]
    edited = [(mid, q) for mid, q in edited if q is not None]
    assert len(edited) >= 30
    found = {mid for _, mid in overlap.contamination({"train": [{"Question": q} for _, q in edited]}, mcq)}
    missed = [mid for mid, _ in edited if mid not in found]
    assert not missed, f"{len(missed)} of {len(edited)} contaminated questions not found: {missed}"


def test_bundled_corpus_is_not_contaminated_by_the_bundled_benchmark(corpus_rows, mcq):
    assert overlap.contamination(overlap.split_rows(corpus_rows), mcq) == []


# --------------------------------------------------------------------------------------------- bundled data


def _sentences(text: str) -> int:
    """Rough count: a sentence ends with . ! or ? followed by a space and a capital, or the end."""
    return len(re.findall(r"[.!?](?=\s+[A-Z(]|\s*$)", text.strip()))


def test_bundled_corpus_shape(corpus_rows):
    assert len(corpus_rows) >= 200
    specialties = Counter(r["specialty"] for r in corpus_rows)
    assert "unspecified" not in specialties
    assert len(specialties) >= 12
    assert max(specialties.values()) / len(corpus_rows) <= 0.15, specialties.most_common(3)
    cot_words = [len(r["Complex_CoT"].split()) for r in corpus_rows]
    assert 80 <= min(cot_words) and max(cot_words) <= 350, (min(cot_words), max(cot_words))
    bad = [(r["Response"], _sentences(r["Response"])) for r in corpus_rows if not 1 <= _sentences(r["Response"]) <= 4]
    assert not bad, bad[:3]


def test_sentence_counter_counts():
    assert _sentences("Iron deficiency. Give oral iron! Recheck in 8 weeks?") == 3
    assert _sentences("Give 2.5 mg of it, e.g. at night") == 0


def test_bundled_mcq_shape(mcq, corpus_rows):
    assert len(mcq) >= 300  # issue 13: grown for the GRPO pool and held-out split
    assert len({m["id"] for m in mcq}) == len(mcq)
    letters = Counter(m["answer"] for m in mcq)
    assert set(letters) == {"A", "B", "C", "D"}
    for letter, n in letters.items():
        assert 0.20 <= n / len(mcq) <= 0.30, (letter, n)
    for m in mcq:
        assert sorted(m["options"]) == ["A", "B", "C", "D"], m["id"]
        assert all(isinstance(v, str) and v.strip() for v in m["options"].values()), m["id"]
        assert len(set(normalize(v) for v in m["options"].values())) == 4, m["id"]
    corpus_questions = {normalize(r["Question"]) for r in corpus_rows}
    assert not [m["id"] for m in mcq if normalize(m["question"]) in corpus_questions]


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda rows: rows[2].update(answer="E"), "line 3: field \"answer\" is 'E', not one of A, B, C, D"),
        (lambda rows: rows[1].pop("options"), 'line 2: field "options" is missing'),
        (lambda rows: rows[0]["options"].update(B="  "), 'line 1: field "options" option B is empty'),
        (lambda rows: rows.__setitem__(4, "{not json"), "line 5: not valid JSON ("),
    ],
    ids=["answer-letter", "missing-options", "empty-option", "invalid-json"],
)
def test_load_mcq_names_the_bad_row(tmp_path, mcq, corrupt, expected):
    """The contamination check reads the benchmark with medreason.mcq's loader, the one evaluation uses."""
    rows = [{k: (dict(v) if isinstance(v, dict) else v) for k, v in m.items()} for m in mcq[:6]]
    corrupt(rows)
    path = tmp_path / "mcq.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(UserError) as e:
        data.load_mcq(path)
    assert str(e.value).startswith(f"{path} {expected}")


def test_load_mcq_reads_a_good_file(tmp_path, mcq):
    path = tmp_path / "mcq.jsonl"
    write_jsonl(path, [{k: v for k, v in m.items() if k != "id"} for m in mcq[:3]])
    assert [m["id"] for m in data.load_mcq(path)] == ["row-1", "row-2", "row-3"]


def test_datasheet_states_the_figures_and_not_for_clinical_use(corpus_rows, mcq):
    text = DATASHEET.read_text(encoding="utf-8")
    assert "Not for clinical use" in text
    letters = Counter(m["answer"] for m in mcq)
    for figure in (str(len(corpus_rows)), str(len(mcq)), *(f"{k} {v}" for k, v in sorted(letters.items()))):
        assert figure in text, figure


# --------------------------------------------------------------------------------------------- formatting

ROW = {
    "Question": "A 24-year-old woman has a malar rash and joint pain. Which antibody is most specific?",
    "Complex_CoT": (
        "Malar rash and arthritis suggest lupus.\n"
        "ANA is sensitive but not specific; anti-dsDNA and anti-Sm are specific."
    ),
    "Response": "Anti-Smith (anti-Sm) antibody.",
    "specialty": "Rheumatology",
}


def test_format_example_think_golden():
    assert data.format_example(ROW, "think") == {
        "prompt": [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": ROW["Question"]},
        ],
        "completion": [
            {
                "role": "assistant",
                "content": (
                    "<think>\n"
                    "Malar rash and arthritis suggest lupus.\n"
                    "ANA is sensitive but not specific; anti-dsDNA and anti-Sm are specific.\n"
                    "</think>\n"
                    "\n"
                    "Anti-Smith (anti-Sm) antibody."
                ),
            }
        ],
        "specialty": "Rheumatology",
    }


def test_format_example_huatuo_golden_and_custom_system_prompt():
    ex = data.format_example(ROW, "huatuo", system_prompt="Be brief.")
    assert ex["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert ex["completion"] == [
        {
            "role": "assistant",
            "content": (
                "## Thinking\n\nMalar rash and arthritis suggest lupus.\n"
                "ANA is sensitive but not specific; anti-dsDNA and anti-Sm are specific.\n\n"
                "## Final Response\n\nAnti-Smith (anti-Sm) antibody."
            ),
        }
    ]


def test_format_example_default_specialty():
    assert data.format_example({k: ROW[k] for k in FIELDS})["specialty"] == "unspecified"


EXPECTED_RENDERING = (
    "<|im_start|>system\n"
    "You are a medical reasoning assistant for education. Think through the question step by step, then give a "
    "concise final answer. Your answers are for teaching, not clinical advice.<|im_end|>\n"
    "<|im_start|>user\n"
    "A 24-year-old woman has a malar rash and joint pain. Which antibody is most specific?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n"
    "Malar rash and arthritis suggest lupus.\n"
    "ANA is sensitive but not specific; anti-dsDNA and anti-Sm are specific.\n"
    "</think>\n"
    "\n"
    "Anti-Smith (anti-Sm) antibody.<|im_end|>\n"
)
PROMPT_RENDERING = EXPECTED_RENDERING.split("<think>")[0]  # ends with "<|im_start|>assistant\n"


def test_chat_template_rendering_golden(tokenizer):
    ex = data.format_example(ROW, "think")
    assert tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False) == EXPECTED_RENDERING
    assert tokenizer.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True) == PROMPT_RENDERING


# --------------------------------------------------------------------------------------------- label masking


@pytest.fixture(scope="module")
def sft_example(tiny_model_dir, tokenizer, tmp_path_factory):
    """One example as TRL 1.16's SFTTrainer prepares and collates it: (input_ids, labels) as lists."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = trl.SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("sft")), max_length=1024, report_to=[], bf16=False, use_cpu=True
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([data.format_example(ROW, "think")]),
    )
    assert trainer.completion_only_loss  # TRL's default for prompt-completion data
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    return batch["input_ids"][0].tolist(), batch["labels"][0].tolist()


def test_sft_input_is_the_whole_rendered_conversation(sft_example, tokenizer):
    input_ids, labels = sft_example
    assert tokenizer.decode(input_ids) == EXPECTED_RENDERING
    assert len(labels) == len(input_ids)


def test_only_the_completion_and_its_end_token_carry_loss(sft_example, tokenizer):
    input_ids, labels = sft_example
    trained = [i for i, label in enumerate(labels) if label != -100]
    assert trained, "no token is trained on"
    # one contiguous run reaching the end of the sequence, with labels equal to the inputs there
    assert trained == list(range(trained[0], len(input_ids)))
    assert all(labels[i] == input_ids[i] for i in trained)
    completion = data.format_example(ROW, "think")["completion"][0]["content"]
    # TRL trains on what the chat template puts after the prompt: the completion, <|im_end|>, then "\n"
    assert tokenizer.decode(input_ids[trained[0] :]) == completion + "<|im_end|>\n"
    learned = tokenizer.decode(input_ids[trained[0] :])
    assert "Malar rash and arthritis suggest lupus." in learned and "</think>" in learned
    assert "Anti-Smith (anti-Sm) antibody.<|im_end|>" in learned


def test_no_prompt_token_carries_loss(sft_example, tokenizer):
    input_ids, labels = sft_example
    masked = [t for t, label in zip(input_ids, labels) if label == -100]
    assert tokenizer.decode(masked) == PROMPT_RENDERING
    assert len(masked) == len(tokenizer(PROMPT_RENDERING, add_special_tokens=False)["input_ids"])
    learned = tokenizer.decode([t for t, label in zip(input_ids, labels) if label != -100])
    for prompt_part in (DEFAULT_SYSTEM_PROMPT, ROW["Question"], "<|im_start|>", "assistant\n", "system", "user"):
        assert prompt_part not in learned, prompt_part


# --------------------------------------------------------------------------------------------- data stats


def test_stats_on_the_bundled_corpus():
    s = data.stats("bundled")
    assert s["rows_read"] == 216 and s["invalid_rows"] == 0
    assert sum(s["splits"].values()) == 216
    assert s["splits"] == {"train": 180, "validation": 18, "test": 18}  # 10/1/1 of each specialty's 12
    assert (s["exact_duplicates_removed"], s["near_duplicates_removed"], s["mcq_contamination"]) == (0, 0, 0)
    t = s["tokens"]
    assert 100 < t["p5"] <= t["p25"] <= t["p50"] <= t["p75"] <= t["p95"] <= t["p100"]
    assert t["p5"] < t["p95"]
    assert (s["truncated_at_max_length"] == 0) == (t["p100"] <= s["max_length"])
    assert sum(s["specialties"].values()) == 216 and len(s["specialties"]) == 18
