"""Tests of the bundled MCQ benchmark as data: its size and balance, the fixed pool/heldout split, and proof that
the RL pool, the held-out evaluation set and the SFT corpus are pairwise disjoint.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_benchmark_data.py -q

Fast (a few seconds) and model-free. The figures DATASHEET.md states about the benchmark are computed here and
checked against its text, so the datasheet cannot drift from the file.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from medreason import data, overlap
from medreason.readers import bundled_path
from medreason.rows import BUNDLED_MCQ, MCQ_LETTERS, MCQ_REASONING_FILE
from medreason.text import normalize

DATASHEET = Path(data.__file__).parent / "resources" / "DATASHEET.md"
SPLIT_NAMES = ("pool", "heldout")
HELDOUT_PER_SPECIALTY = 7  # of 17 per specialty: 126 held out, 180 in the pool


@pytest.fixture(scope="module")
def mcq():
    return data.load_mcq()


@pytest.fixture(scope="module")
def parts(mcq):
    return {name: [m for m in mcq if m["split"] == name] for name in SPLIT_NAMES}


@pytest.fixture(scope="module")
def corpus_rows():
    rows, _ = data.load_clean_rows("bundled")
    return rows


@pytest.fixture(scope="module")
def mcq_sft_rows():
    """The CPU curriculum's SFT set (bundled-mcq) as the pipeline reads it; `stem` is the bare question."""
    rows, _ = data.load_clean_rows(BUNDLED_MCQ)
    return rows


def _letters(items) -> Counter:
    return Counter(m["answer"] for m in items)


def _assert_letters_even(items, slack: int):
    letters = _letters(items)
    assert set(letters) == set(MCQ_LETTERS), letters
    even = len(items) / len(MCQ_LETTERS)
    assert all(abs(n - even) <= slack for n in letters.values()), (letters, even)


# --------------------------------------------------------------------------------------------- size and balance


def test_benchmark_size_letters_and_specialties(mcq):
    assert len(mcq) >= 300
    _assert_letters_even(mcq, slack=5)
    specialties = Counter(m["specialty"] for m in mcq)
    assert len(specialties) >= 12, specialties
    assert max(specialties.values()) / len(mcq) <= 0.15, specialties.most_common(3)


def test_ids_are_unique_and_numbered(mcq):
    ids = [m["id"] for m in mcq]
    assert len(set(ids)) == len(ids)
    assert ids == [f"mcq-{n:03d}" for n in range(1, len(mcq) + 1)]


def test_every_item_has_one_answer_among_four_distinct_options(mcq):
    for m in mcq:
        assert m["answer"] in m["options"], m["id"]
        assert len({normalize(v) for v in m["options"].values()}) == 4, m["id"]
        assert m["explanation"].strip() and m["specialty"].strip(), m["id"]


# --------------------------------------------------------------------------------------------- the fixed split


def test_every_item_is_in_exactly_one_split(mcq, parts):
    assert {m["split"] for m in mcq} == set(SPLIT_NAMES)
    assert sum(len(p) for p in parts.values()) == len(mcq)


def test_split_sizes(parts):
    assert len(parts["heldout"]) >= 120
    assert len(parts["pool"]) >= len(parts["heldout"])


def test_split_is_stratified_by_specialty(mcq, parts):
    """Every specialty holds out the same number of its questions, so the held-out share is the same in each."""
    total = Counter(m["specialty"] for m in mcq)
    held = Counter(m["specialty"] for m in parts["heldout"])
    assert set(held) == set(total)
    assert set(held.values()) == {HELDOUT_PER_SPECIALTY}, held
    share = len(parts["heldout"]) / len(mcq)
    assert all(abs(held[s] - share * n) <= 1 for s, n in total.items())


def test_split_follows_the_hash_rule(mcq):
    """The split is not hand-picked: within each specialty the held-out items are exactly those with the lowest
    hash of the normalised question (medreason.overlap.question_hash), so it can be recomputed from the text."""
    by_specialty: dict[str, list[dict]] = {}
    for m in mcq:
        by_specialty.setdefault(m["specialty"], []).append(m)
    for specialty, items in by_specialty.items():
        ranked = sorted(items, key=lambda m: overlap.question_hash(m["question"]))
        expected = ["heldout"] * HELDOUT_PER_SPECIALTY + ["pool"] * (len(items) - HELDOUT_PER_SPECIALTY)
        assert [m["split"] for m in ranked] == expected, specialty


def test_letters_are_balanced_within_each_split(parts):
    _assert_letters_even(parts["heldout"], slack=3)
    _assert_letters_even(parts["pool"], slack=4)


# --------------------------------------------------------------------------------------------- disjointness


def _as_sft(items) -> list[dict]:
    """Benchmark items in the shape contamination() reads its first argument in."""
    return [{"Question": m["question"]} for m in items]


def test_sft_corpus_does_not_overlap_pool_or_heldout(corpus_rows, parts):
    sft = overlap.split_rows(corpus_rows)
    assert overlap.contamination(sft, parts["pool"]) == []
    assert overlap.contamination(sft, parts["heldout"]) == []


def test_mcq_reasoning_set_does_not_overlap_pool_or_heldout(mcq_sft_rows, parts):
    """The SFT curriculum's multiple-choice items are new questions: none is a benchmark question, in any of the
    pipeline's train/validation/test splits."""
    sft = overlap.split_rows(mcq_sft_rows)
    assert sum(map(len, sft.values())) == len(mcq_sft_rows) and all("stem" in r for r in mcq_sft_rows)
    assert overlap.contamination(sft, parts["pool"]) == []
    assert overlap.contamination(sft, parts["heldout"]) == []
    # and the check reads the bare question: a heldout question copied in with its options is caught
    leaked = dict(mcq_sft_rows[0], stem=parts["heldout"][3]["question"])
    assert overlap.contamination({"train": [leaked]}, parts["heldout"]) == [("train", parts["heldout"][3]["id"])]


def test_mcq_reasoning_set_teaches_no_heldout_answer(mcq_sft_rows, parts):
    """An SFT item may share a correct answer with a heldout item (a common drug or diagnosis) only when the
    questions have little in common: it must not teach the answer to that heldout question."""
    from medreason.mcq import load_benchmark

    for item in load_benchmark(bundled_path(MCQ_REASONING_FILE)):
        for m in parts["heldout"]:
            if normalize(m["options"][m["answer"]]) == normalize(item.options[item.answer]):
                assert overlap.jaccard(item.question, m["question"]) < 0.2, (item.id, m["id"])


def test_pool_does_not_overlap_heldout(parts):
    assert overlap.contamination({"pool": _as_sft(parts["pool"])}, parts["heldout"]) == []


def test_the_overlap_check_would_catch_a_leak(parts):
    """Guards against a vacuous disjointness test: a pool question copied into the held-out set is found."""
    leaked = dict(parts["pool"][5], id="leaked")
    assert overlap.contamination({"pool": _as_sft(parts["pool"])}, parts["heldout"] + [leaked]) == [("pool", "leaked")]


def test_no_exact_normalised_question_is_shared(corpus_rows, mcq_sft_rows, parts):
    texts = {
        "corpus": {normalize(r["Question"]) for r in corpus_rows},
        "mcq_sft": {normalize(r["stem"]) for r in mcq_sft_rows},
        **{name: {normalize(m["question"]) for m in items} for name, items in parts.items()},
    }
    assert len(texts["pool"]) == len(parts["pool"]) and len(texts["heldout"]) == len(parts["heldout"])
    for a, b in itertools.combinations(texts, 2):
        assert not texts[a] & texts[b], (a, b)


@pytest.fixture(scope="module")
def highest_similarity(corpus_rows, mcq_sft_rows, parts) -> dict[str, float]:
    """The highest word-3-gram Jaccard similarity between any two questions of two different sets, for each
    pair of sets, computed over every pair of questions (no LSH)."""
    shingled = {
        "corpus": [overlap.shingles(r["Question"]) for r in corpus_rows],
        "mcq_sft": [overlap.shingles(r["stem"]) for r in mcq_sft_rows],
        **{name: [overlap.shingles(m["question"]) for m in items] for name, items in parts.items()},
    }
    return {
        f"{a}/{b}": max(len(sa & sb) / max(1, len(sa | sb)) for sa in shingled[a] for sb in shingled[b])
        for a, b in itertools.combinations(shingled, 2)
    }


def test_no_pair_reaches_the_contamination_threshold_exhaustively(highest_similarity, parts):
    """contamination() finds candidates with MinHash LSH; this checks every pair across the three sets with the
    exact word-3-gram Jaccard, so a pair LSH happened to miss would still fail here."""
    assert set(highest_similarity) == {
        "corpus/mcq_sft",
        "corpus/pool",
        "corpus/heldout",
        "mcq_sft/pool",
        "mcq_sft/heldout",
        "pool/heldout",
    }
    assert all(j < 0.5 for j in highest_similarity.values()), highest_similarity
    one = parts["pool"][0]["question"]
    assert overlap.jaccard(one, one) == 1.0  # the measure reaches 1 on identical text, so the maxima mean something


def test_benchmark_has_no_near_duplicates(mcq):
    rows = [{"Question": m["question"], "Response": m["options"][m["answer"]]} for m in mcq]
    kept, exact, near = overlap.deduplicate(rows)
    assert (len(kept), exact, near) == (len(mcq), 0, 0)


# --------------------------------------------------------------------------------------------- the datasheet


def datasheet_figures(mcq, parts, highest_similarity) -> list[str]:
    """The benchmark figures DATASHEET.md must state, as they are written there."""

    def letters(items):
        return ", ".join(f"{k} {v}" for k, v in sorted(_letters(items).items()))

    specialties = Counter(m["specialty"] for m in mcq)
    return [
        f"**{len(mcq)} items**",
        f"`mcq-001` to `mcq-{len(mcq):03d}`",
        f"{len(specialties)} specialties, {max(specialties.values())} items each",
        f"Answer letters: {letters(mcq)}",
        f"{len(parts['pool'])} pool, {len(parts['heldout'])} heldout",
        f"heldout letters: {letters(parts['heldout'])}",
        f"pool letters: {letters(parts['pool'])}",
        f"{HELDOUT_PER_SPECIALTY} of each specialty's {max(specialties.values())}",
        *(f"{pair} {j:.2f}" for pair, j in highest_similarity.items()),
    ]


def test_datasheet_states_the_benchmark_figures(mcq, parts, highest_similarity):
    text = " ".join(DATASHEET.read_text(encoding="utf-8").split())
    missing = [f for f in datasheet_figures(mcq, parts, highest_similarity) if f not in text]
    assert not missing, missing
