"""The knowledge experiment's fact set (medreason/resources/facts.jsonl) is a controlled experiment before any model
sees it: every rule of medreason.facts holds on the bundled file, and each rule catches a planted violation; the
halves are drawn at random with the seed, within each specialty, and only the taught half reaches training; the
figures DATASHEET.md states are computed here. Model-free, a few seconds."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from medreason import data
from medreason.errors import UserError
from medreason.facts import (
    FORMS,
    Question,
    assign_halves,
    bundled_facts_path,
    load_facts,
    mentions,
    names_key,
    no_knowledge_rules,
    problems,
    statement_rows,
)
from medreason.readers import bundled_path, read_file

DATASHEET = Path(data.__file__).parent / "resources" / "DATASHEET.md"
SEED = 20261207


@pytest.fixture(scope="module")
def facts():
    return load_facts()


def test_the_bundled_set_breaks_no_rule(facts):
    assert problems(facts) == []
    assert all(sorted(s.form for s in f.statements) == sorted(FORMS) for f in facts)


def _with(fact, **changes):
    return dataclasses.replace(fact, **changes)


def _question(q: Question, **changes) -> Question:
    return dataclasses.replace(q, **changes)


def test_each_rule_finds_a_planted_violation(facts):
    """One broken copy per rule, each named by the fact's id and the rule it breaks."""
    f, g = facts[0], facts[1]
    rest = facts[2:]

    def found(*changed):
        return "\n".join(problems([*changed, *rest]))

    # disjoint wording: the held-out question reuses five words of a training statement
    leak = " ".join(f.statements[0].text.split()[:6])
    assert f"{f.id}: mcq shares the 5-gram" in found(_with(f, mcq=_question(f.mcq, question=leak + "?")), g)
    # untaught means untaught: a statement of g names f's key term
    s = dataclasses.replace(g.statements[0], text=g.statements[0].text + f" Compare {f.key}.")
    assert f"{g.id}: names {f.id}'s key term" in found(f, _with(g, statements=(s, *g.statements[1:])))
    # no familiar distractors: a wrong option of f appears in a training statement of g
    wrong = f.mcq.distractors[0]
    s = dataclasses.replace(g.statements[1], text=g.statements[1].text + f" Not {wrong}.")
    assert f"{f.id}: mcq's wrong option {wrong!r} occurs in a training statement of {g.id}" in found(
        f, _with(g, statements=(g.statements[0], s, *g.statements[2:]))
    )
    # no answer in the question
    assert f"{f.id}: the recall question names the key term" in found(_with(f, recall=f"Is it {f.key}?"), g)
    # one statement of each form
    assert f"{f.id}: no statement of form vignette" in found(
        _with(f, statements=tuple(s for s in f.statements if s.form != "vignette")), g
    )

    # balanced options: make the correct option the longest everywhere
    def longest(fact):
        q = fact.mcq
        options = {k: (v + " with a much longer description" * 3 if k == q.answer else v) for k, v in q.options.items()}
        return _with(fact, mcq=_question(q, options=options))

    assert "mcq: the longest option rule scores" in "\n".join(problems([longest(x) for x in facts]))


def test_a_malformed_row_names_its_file_and_line(tmp_path):
    rows = bundled_facts_path().read_text(encoding="utf-8").splitlines()[:2]
    bad = json.loads(rows[1])
    bad["mcq"]["answer"] = "E"
    path = tmp_path / "facts.jsonl"
    path.write_text(rows[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=r'facts.jsonl line 2: field "mcq.answer" must be one of A, B, C, D'):
        load_facts(path)


def test_the_checker_cli_exits_1_on_a_broken_rule_and_2_on_a_malformed_file(tmp_path, capsys):
    from medreason.facts import main

    rows = [json.loads(x) for x in bundled_facts_path().read_text(encoding="utf-8").splitlines()[:8]]
    rows[0]["recall"] = f"Is it {rows[0]['key']}?"
    path = tmp_path / "part.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["check", str(path)]) == 1
    assert f"{rows[0]['id']}: the recall question names the key term" in capsys.readouterr().out
    path.write_text("{not json\n")
    assert main(["check", str(path)]) == 2
    assert main(["check", str(bundled_facts_path())]) == 0


def test_open_recall_must_name_the_key_and_no_wrong_option(facts):
    f = next(x for x in facts if x.aliases)
    assert names_key(f"It is {f.key}.", f) and names_key(f"That is {f.aliases[0]}.", f)
    assert not names_key(f"Either {f.key} or {f.mcq.distractors[0]}.", f)  # a list of candidates is not a recall
    assert not names_key("I do not know.", f)


def test_no_knowledge_rules_worked_example():
    """Two questions: the answer is the longest option in the first, tied longest with one other in the second."""
    q1 = Question("q1", {"A": "aaaa", "B": "b", "C": "c", "D": "d"}, "A")
    q2 = Question("q2", {"A": "a", "B": "bbbb", "C": "cccc", "D": "d"}, "B")
    rules = no_knowledge_rules([q1, q2])
    assert rules["longest_option"] == pytest.approx((1 + 0.5) / 2)
    assert rules["same_letter"] == pytest.approx(0.5)
    assert rules["shortest_option"] == pytest.approx(0.0)


def test_halves_are_seeded_stratified_and_a_partition(facts):
    halves = assign_halves(facts, SEED)
    taught, untaught = ({f.id for f in halves[h]} for h in ("taught", "untaught"))
    assert taught.isdisjoint(untaught) and taught | untaught == {f.id for f in facts}
    assert {f.id for f in assign_halves(facts, SEED)["taught"]} == taught  # same seed, same draw
    assert {f.id for f in assign_halves(facts, SEED + 1)["taught"]} != taught  # another seed, another draw
    for specialty, n in Counter(f.specialty for f in facts).items():
        k = sum(f.specialty == specialty for f in halves["taught"])
        assert abs(k - (n - k)) <= 1, specialty
    # the draw is not the file order: taught facts are spread over each specialty's positions
    positions = Counter()
    for specialty in {f.specialty for f in facts}:
        group = [f for f in facts if f.specialty == specialty]
        positions.update(i for i, f in enumerate(group) if f.id in taught)
    assert len(positions) == 8 and max(positions.values()) < 18


def test_only_the_taught_half_reaches_training(facts):
    """The facts recipe's data: the MCQ reasoning set's splits, plus the taught facts' statements in train only;
    no untaught fact's key term is in any training text."""
    splits, report = data.load_splits("bundled-mcq+bundled-facts", system_prompt="", facts_repeats=2, with_report=True)
    mcq_only = data.load_splits("bundled-mcq", system_prompt="")
    halves = assign_halves(facts, SEED)
    n_statements = len(statement_rows(halves["taught"]))
    assert len(splits["train"]) == len(mcq_only["train"]) + 2 * n_statements
    assert len(splits["validation"]) == len(mcq_only["validation"]) and len(splits["test"]) == len(mcq_only["test"])
    assert report.source["facts"]["facts_taught"] == len(halves["taught"]) == 72
    trained = " ".join(ex["prompt"][-1]["content"] + " " + ex["completion"][0]["content"] for ex in splits["train"])
    assert all(mentions(trained, f.key) for f in halves["taught"])
    untaught_texts = [t for f in halves["untaught"] for s in f.statements for t in (s.prompt, s.text)]
    assert not [t for t in untaught_texts if t in trained]
    # the MCQ-format set names a few key terms in other roles (a wrong option, a step of reasoning): a background
    # exposure common to every arm that trains on it, fixed before the draw, and stated in the datasheet
    facts_only = data.load_splits("bundled-facts", system_prompt="")
    own = " ".join(ex["prompt"][-1]["content"] + " " + ex["completion"][0]["content"] for ex in facts_only["train"])
    assert not [f.id for f in halves["untaught"] if any(mentions(own, n) for n in f.names)]
    one = data.load_splits("bundled-facts", system_prompt="", facts_statements=1)
    assert len(one["train"]) == len(halves["taught"]) and all(ex["prompt"][0]["role"] == "user" for ex in one["train"])


def test_datasheet_states_the_fact_set_figures(facts):
    text = " ".join(DATASHEET.read_text(encoding="utf-8").split())
    ids = sorted(f.id for f in facts)
    specialties = Counter(f.specialty for f in facts)
    halves = assign_halves(facts, SEED)
    words = [len(s.text.split()) for f in facts for s in f.statements]

    def letters(which):
        c = Counter(getattr(f, which).answer for f in facts)
        return ", ".join(f"{k} {c[k]}" for k in "ABCD")

    rules = {w: no_knowledge_rules([getattr(f, w) for f in facts]) for w in ("mcq", "mcq_rl")}
    mcq_set = " ".join(
        json.dumps([r["question"], r["options"], r["reasoning"]])
        for r in read_file(bundled_path("mcq_reasoning.jsonl"))
    )
    named = [f for f in facts if any(mentions(mcq_set, n) for n in f.names)]
    untaught = {f.id for f in halves["untaught"]}
    expected = [
        f"**{len(facts)} facts**",
        f"ids `{ids[0]}` to `{ids[-1]}`",
        f"{len(specialties)} specialties, {max(specialties.values())} facts each",
        f"({min(words)}–{max(words)} words each, mean {sum(words) / len(words):.0f})",
        f"{sum(bool(f.aliases) for f in facts)} facts also list aliases",
        f"**{len(halves['taught'])} taught, {len(halves['untaught'])} untaught**",
        f"`facts_seed: {SEED}`",
        "Measured on `mcq`: the same letter {same_letter:.2f}, the longest option {longest_option:.2f}, the shortest "
        "option {shortest_option:.2f}".format(**rules["mcq"]),
        "on `mcq_rl`: {same_letter:.2f}, {longest_option:.2f}, {shortest_option:.2f}".format(**rules["mcq_rl"]),
        f"names the key terms of {len(named)} facts ({sum(f.id in untaught for f in named)} of them untaught)",
    ]
    expected.append(f"Answer letters: **{letters('mcq')}** in `mcq`")
    assert letters("mcq") == letters("mcq_rl")  # the datasheet states one count for both
    missing = [f for f in expected if f not in text]
    assert not missing, missing
