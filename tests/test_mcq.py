"""medreason.mcq: every option shape loads (letters A-E, free labels with context, lists in letter order, CSV
columns, Parquet structs), bad rows name their row and field, stratified subsets, chance per item, the prompt."""

import json

import pytest

from medreason import baselines, mcq
from medreason.errors import UserError

FIVE = {
    "id": "usmle-1",
    "question": "A 67-year-old woman has chest pain after her son's death. What is the diagnosis?",
    "options": {
        "A": "Prinzmetal angina",
        "B": "Myocarditis",
        "C": "Takotsubo cardiomyopathy",
        "D": "Anterior STEMI",
        "E": "Aortic dissection",
    },
    "answer": "C",
    "specialty": "Cardiology",
}
PUBMEDQA = {
    "context": "In 120 adults, drug X lowered systolic pressure by 4 mm Hg versus placebo (p = 0.30).",
    "question": "Does drug X lower blood pressure?",
    "options": ["yes", "no", "maybe"],
    "answer": "No",
    "group": "pharmacology",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bundled_benchmark_loads_unchanged():
    items = mcq.load_benchmark()
    assert len(items) >= 300
    assert all(list(i.options) == ["A", "B", "C", "D"] and i.answer in i.options for i in items)
    assert mcq.chance(items) == pytest.approx(0.25)
    assert len({i.group for i in items}) == 18
    pool, heldout = mcq.bundled_split("pool"), mcq.bundled_split("heldout")
    assert len(pool) + len(heldout) == len(items)
    assert not {i.id for i in pool} & {i.id for i in heldout}


def test_both_row_shapes_load(tmp_path):
    five, ynm = mcq.load_benchmark(write_jsonl(tmp_path / "b.jsonl", [FIVE, PUBMEDQA]))
    assert five.lettered and list(five.options) == list("ABCDE") and five.answer == "C"
    assert five.group == "Cardiology" and five.id == "usmle-1" and five.chance == pytest.approx(0.2)
    assert not ynm.lettered and ynm.options == {"yes": "yes", "no": "no", "maybe": "maybe"}
    assert ynm.answer == "no" and ynm.context.startswith("In 120 adults") and ynm.group == "pharmacology"
    assert ynm.id == "row-2"


def test_chance_is_averaged_per_item(tmp_path):
    two = {"question": "Is aspirin an NSAID?", "options": ["yes", "no"], "answer": "yes"}
    items = mcq.load_benchmark(write_jsonl(tmp_path / "b.jsonl", [FIVE, PUBMEDQA, two]))
    assert mcq.chance(items) == pytest.approx((1 / 5 + 1 / 3 + 1 / 2) / 3)


def test_list_of_texts_with_a_letter_answer_is_lettered(tmp_path):
    row = {
        "question": "Which vitamin deficiency causes scurvy?",
        "options": ["Vitamin A", "Vitamin C", "Vitamin D"],
        "answer": "B",
    }
    (item,) = mcq.load_benchmark(write_jsonl(tmp_path / "b.jsonl", [row]))
    assert item.options == {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D"} and item.answer == "B"


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_other_file_types(tmp_path, suffix):
    rows = [
        FIVE,
        {**FIVE, "id": "usmle-2", "options": {k: v for k, v in FIVE["options"].items() if k != "E"}, "answer": "D"},
    ]
    path = tmp_path / f"b{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        import pandas as pd

        pd.DataFrame([{**{k: v for k, v in r.items() if k != "options"}, **r["options"]} for r in rows]).to_csv(
            path, index=False
        )
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)  # options become a struct; the 4-option row gets E = null
    items = mcq.load_benchmark(path)
    assert [list(i.options) for i in items] == [list("ABCDE"), list("ABCD")]
    assert [i.answer for i in items] == ["C", "D"]


def test_csv_with_json_options_cell(tmp_path):
    path = tmp_path / "b.csv"
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["context", "question", "options", "answer"])
        w.writeheader()
        w.writerow(
            {**{k: PUBMEDQA[k] for k in ("context", "question", "answer")}, "options": json.dumps(PUBMEDQA["options"])}
        )
    (item,) = mcq.load_benchmark(path)
    assert item.options == {"yes": "yes", "no": "no", "maybe": "maybe"} and item.answer == "no"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"options": {"A": "x", "B": "y", "D": "z"}}, 'line 2: field "options" must map the letters A, B, C'),
        ({"options": {"A": "x"}}, 'line 2: field "options" has 1 options: give 2 to 10'),
        ({"options": [f"o{i}" for i in range(11)], "answer": "o1"}, 'line 2: field "options" has 11 options'),
        ({"options": {"A": "x", "B": " "}}, 'line 2: field "options" option B is empty'),
        (
            {"options": {"A": "x", "B": "X"}, "answer": "A"},
            'line 2: field "options" has two options with the same text',
        ),
        ({"answer": "F"}, "line 2: field \"answer\" is 'F', not one of A, B, C, D, E"),
        ({"answer": 3}, 'line 2: field "answer" is a number, not one of'),
        ({"question": ""}, 'line 2: field "question" is empty'),
        ({"question": None}, 'line 2: field "question" is missing'),
        ({"options": 5}, 'line 2: field "options" is a number'),
        ({"context": 7}, 'line 2: field "context" is a number, not text'),
        ({"id": "usmle-1"}, 'line 2: field "id" repeats'),
    ],
)
def test_bad_row_names_row_and_field(tmp_path, change, message):
    path = write_jsonl(tmp_path / "b.jsonl", [FIVE, {**FIVE, "id": "x2", **change}])
    with pytest.raises(UserError) as e:
        mcq.load_benchmark(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_unparseable_line_and_bad_files(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(FIVE) + "\n{not json\n")
    with pytest.raises(UserError, match=r"b.jsonl line 2: not valid JSON"):
        mcq.load_benchmark(path)
    with pytest.raises(UserError, match="file not found"):
        mcq.load_benchmark(tmp_path / "missing.jsonl")
    bad_csv = tmp_path / "b.csv"
    bad_csv.write_text("Question,Response\nx,y\n")
    with pytest.raises(UserError, match="header row naming question, answer and options"):
        mcq.load_benchmark(bad_csv)
    with pytest.raises(UserError, match="split 'test' is unknown"):
        mcq.bundled_split("test")


def test_stratified_subset_is_proportional_seeded_and_in_order():
    items = mcq.bundled_split("heldout")
    groups = mcq.group_counts(items)
    sub = mcq.stratified_subset(items, 48, seed=0)
    assert len(sub) == 48
    counts = mcq.group_counts(sub)
    assert set(counts) == set(groups)  # every specialty, unlike the first 48 of a file sorted by specialty
    assert all(abs(counts[g] - 48 * groups[g] / len(items)) < 1 for g in groups)
    assert [i.id for i in sub] == [i.id for i in mcq.stratified_subset(items, 48, seed=0)]
    assert [i.id for i in sub] != [i.id for i in mcq.stratified_subset(items, 48, seed=1)]
    order = [i.id for i in items]
    assert [order.index(i.id) for i in sub] == sorted(order.index(i.id) for i in sub)
    assert mcq.stratified_subset(items, None) == items and mcq.stratified_subset(items, 10_000) == items
    small = mcq.stratified_subset(items, 5, seed=0)
    assert len(small) == 5 and len(mcq.group_counts(small)) == 5
    with pytest.raises(UserError, match="limit must be at least 1"):
        mcq.stratified_subset(items, 0)


def test_prompt_lists_the_options(tmp_path):
    five, ynm = mcq.load_benchmark(write_jsonl(tmp_path / "b.jsonl", [FIVE, PUBMEDQA]))
    msgs = mcq.prompt_messages(five, "SYSTEM")
    assert msgs[0] == {"role": "system", "content": "SYSTEM"} and msgs[1]["role"] == "user"
    assert msgs[1]["content"] == (
        f"Question: {FIVE['question']}\n\nOptions:\nA. Prinzmetal angina\nB. Myocarditis\n"
        "C. Takotsubo cardiomyopathy\nD. Anterior STEMI\nE. Aortic dissection\n\n"
        'Think it through, then end with "The answer is X", where X is one of A, B, C, D, E.'
    )
    user = mcq.prompt_messages(ynm, None)
    assert len(user) == 1
    assert user[0]["content"] == (
        f"Context: {PUBMEDQA['context']}\n\nQuestion: {PUBMEDQA['question']}\n\nOptions: yes / no / maybe\n\n"
        'Think it through, then end with "The answer is X", where X is one of yes, no, maybe.'
    )


# --------------------------------------------------------------------------------------------- trivial baselines
# A worked example, computed by hand. Four items:
#   1. answer A; options A "a" (1 char), B "bbbb" (4), C "cc", D "d"            -> longest is B alone (wrong)
#   2. answer B; options A "x", B "yyyyy" (5), C "zz", D "w"                     -> longest is B alone (right: 1)
#   3. answer C; options A "pp", B "qq", C "rr", D "ss"                           -> four-way tie, answer among them: 1/4
#   4. answer B; options A "mmm", B "nnn", C "o", D "p"                           -> tie A/B, answer among them: 1/2
# longest option = (0 + 1 + 1/4 + 1/2) / 4 = 0.4375. Answers A, B, C, B: always B scores 2/4 = 0.5, A and C 0.25,
# D 0; the best same label is B (0.5). With a prior whose answers are mostly D, the majority label is D: 0 here.
BASELINE_ITEMS = [
    mcq.MCQItem("1", "q1", {"A": "a", "B": "bbbb", "C": "cc", "D": "d"}, "A"),
    mcq.MCQItem("2", "q2", {"A": "x", "B": "yyyyy", "C": "zz", "D": "w"}, "B"),
    mcq.MCQItem("3", "q3", {"A": "pp", "B": "qq", "C": "rr", "D": "ss"}, "C"),
    mcq.MCQItem("4", "q4", {"A": "mmm", "B": "nnn", "C": "o", "D": "p"}, "B"),
]


def test_trivial_baselines_worked_example():
    b = baselines.trivial_baselines(BASELINE_ITEMS)
    assert b["chance"]["accuracy"] == pytest.approx(0.25)
    assert b["longest_option"]["accuracy"] == pytest.approx(0.4375)
    assert b["same_label"]["by_label"] == {"A": 0.25, "B": 0.5, "C": 0.25, "D": 0.0}
    assert b["same_label"]["label"] == "B" and b["same_label"]["accuracy"] == 0.5
    # no prior: the majority of the scored items themselves, the same as the best same label
    assert b["majority_label"]["label"] == "B" and b["majority_label"]["accuracy"] == 0.5
    # a tie goes to the rule listed first (the majority label needs no look at the answers)
    assert b["best"] == {"rule": "majority_label", "accuracy": 0.5}


def test_majority_label_comes_from_the_prior_when_given():
    prior = [mcq.MCQItem(str(i), "q", {"A": "a", "B": "b", "C": "c", "D": "d"}, "D") for i in range(3)]
    b = baselines.trivial_baselines(BASELINE_ITEMS, prior=prior)
    assert b["majority_label"]["label"] == "D" and b["majority_label"]["accuracy"] == 0.0
    assert "3 other items" in b["majority_label"]["label_from"]


def test_trivial_baselines_free_labels_and_the_bundled_heldout_split():
    ynm = [
        mcq.MCQItem(str(i), "q", {"yes": "yes", "no": "no", "maybe": "maybe"}, a)
        for i, a in enumerate(["yes", "yes", "no", "maybe"])
    ]
    b = baselines.trivial_baselines(ynm)
    assert b["same_label"]["label"] == "yes" and b["same_label"]["accuracy"] == 0.5
    assert b["longest_option"]["accuracy"] == 0.25  # "maybe" is the longest label, right once
    # the bundled heldout split: letters balanced (best same letter 32/126), the longest option a real cue
    held = baselines.trivial_baselines(mcq.bundled_split("heldout"), prior=mcq.bundled_split("pool"))
    assert held["same_label"]["accuracy"] == pytest.approx(32 / 126)
    assert held["best"]["rule"] == "longest_option" and held["best"]["accuracy"] > 0.3
