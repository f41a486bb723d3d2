"""Which rows are the same question: the split by question hash, near-duplicate removal and the contamination
check against the MCQ benchmark (MinHash over word 3-grams, confirmed by exact Jaccard).

    from medreason.overlap import deduplicate, contamination, split_rows
    rows, exact, near = deduplicate(rows)                      # keeps the first of each group
    parts = split_rows(rows)                                   # train/validation/test by a hash of the question
    hits = contamination(parts, load_mcq())                    # (split, benchmark id) of every overlap

The split ranks rows by a hash of the normalised question, so it does not depend on row order.
"""

from __future__ import annotations

import hashlib

from medreason.text import normalize

NEAR_DUP_THRESHOLD = 0.8  # Jaccard similarity of word 3-grams
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def question_hash(question: str) -> int:
    return int.from_bytes(hashlib.sha256(normalize(question).encode()).digest()[:8], "big")


def split_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """80/10/10 train/validation/test, stratified by specialty when the rows name more than one (each specialty
    is split on its own, so a small one still reaches validation and test), by rank of a hash of the normalised
    question within each: the same rows give the same split in any order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("specialty") or "unspecified", []).append(row)
    parts: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for _, group in sorted(groups.items()):
        ordered = sorted(group, key=lambda r: question_hash(r["Question"]))
        start = 0
        for i, (name, share) in enumerate(SPLITS.items()):
            end = len(ordered) if i == len(SPLITS) - 1 else start + round(share * len(ordered))
            parts[name].extend(ordered[start:end])
            start = end
    return parts


def shingles(text: str, n: int = 3) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def minhash(text: str):
    from datasketch import MinHash

    m = MinHash(num_perm=128, seed=1)
    for s in shingles(text):
        m.update(s.encode())
    return m


def deduplicate(rows: list[dict]) -> tuple[list[dict], int, int]:
    """Drop exact duplicates (same normalised question and answer) and near-duplicate questions
    (Jaccard of word 3-grams at least NEAR_DUP_THRESHOLD). Keeps the first of each group."""
    from datasketch import MinHashLSH

    seen, unique = set(), []
    for row in rows:
        key = (normalize(row["Question"]), normalize(row["Response"]))
        if key not in seen:
            seen.add(key)
            unique.append(row)
    exact = len(rows) - len(unique)
    # LSH only proposes candidates; at the threshold itself it misses about half of the true pairs, so
    # it runs at half the threshold and the exact Jaccard below decides.
    from medreason.progress import progress

    lsh = MinHashLSH(threshold=NEAR_DUP_THRESHOLD / 2, num_perm=128)
    kept = []
    with progress(total=len(unique), desc="near-duplicates", unit="rows") as bar:
        for i, row in enumerate(unique):
            bar.update(1)
            m = minhash(row["Question"])
            candidates = lsh.query(m)
            if any(jaccard(row["Question"], unique[j]["Question"]) >= NEAR_DUP_THRESHOLD for j in candidates):
                continue
            lsh.insert(i, m)
            kept.append(row)
    return kept, exact, len(unique) - len(kept)


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))


def contamination(parts: dict[str, list[dict]], mcq: list[dict], threshold: float = 0.5) -> list[tuple[str, str]]:
    """(split, MCQ id) for every SFT question that shares at least `threshold` of its word 3-grams
    (Jaccard) with a benchmark question, or equals one after normalisation."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold / 2, num_perm=128)  # candidates only, as in deduplicate()
    for item in mcq:
        lsh.insert(item["id"], minhash(item["question"]))
    from medreason.progress import progress

    by_id = {item["id"]: item for item in mcq}
    hits = []
    with progress(total=sum(map(len, parts.values())), desc="contamination check", unit="rows") as bar:
        for name, rows in parts.items():
            for row in rows:
                bar.update(1)
                question = row.get("stem") or row["Question"]  # an MCQ row's question without its options
                for mid in lsh.query(minhash(question)):
                    if jaccard(question, by_id[mid]["question"]) >= threshold:
                        hits.append((name, mid))
    return hits
