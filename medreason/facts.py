"""The knowledge experiment's fact set: medical facts, each taught by several training statements and tested by
questions worded apart from them (medreason/resources/facts.jsonl, documented in DATASHEET.md).

    from medreason.facts import load_facts, assign_halves, problems
    facts = load_facts()                          # every fact, checked
    halves = assign_halves(facts, seed=20261207)  # {"taught": [...], "untaught": [...]}, stratified by specialty
    problems(facts)                               # [] when every rule of the set holds (tests/test_facts.py)
    python -m medreason.facts check part-1.jsonl part-2.jsonl   # the same rules over files, one line a problem

A fact is one relation with a short **key term** (the answer a person would name: "thiamine"). It carries

- `statements`: at least four training texts, one of each form in FORMS (a definition, a short clinical vignette,
  a question with its answer, an explanation), each a chat turn `prompt` -> `text` that names the key term;
- `recall`: an open question whose answer is the key term, in a wording no statement uses;
- `mcq`: the held-out four-option question (A-D), its correct option the key term;
- `mcq_rl`: a second four-option question on the same fact, worded apart from `mcq` (the GRPO pool);
- `reference`: the standard textbook or guideline the fact is checked against.

The rules that make it a controlled experiment (`problems` lists every one broken):

- **Disjoint wording**: no word 5-gram of a fact's questions (recall, mcq, mcq_rl: question and options) occurs in
  its training statements (prompt or text), and none of mcq occurs in mcq_rl.
- **Untaught means untaught**: a fact's key term (or an alias) occurs in no other fact's statements or questions,
  so teaching one half says nothing about the other.
- **No familiar distractors**: a wrong option occurs in no statement of any fact and is no fact's key term. A
  model trained on statements comes to prefer words it was taught, right or wrong (a shift this experiment
  measures); a distractor it was taught would turn that preference into a penalty on untaught questions.
- **No answer in the question**: the key term occurs in no question stem.
- **Balanced options**: over the held-out MCQs, no rule that needs no knowledge (same letter, longest option,
  shortest option) scores above chance + 0.05.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from medreason.errors import UserError
from medreason.text import normalize

FORMS = ("definition", "vignette", "qa", "explanation")
LETTERS = ("A", "B", "C", "D")
NGRAM = 5
FACTS_FILE = "facts.jsonl"
# how far a no-knowledge rule may score above chance on the held-out MCQs
BALANCE_MARGIN = 0.05


@dataclass(frozen=True)
class Statement:
    form: str
    prompt: str
    text: str


@dataclass(frozen=True)
class Question:
    question: str
    options: dict[str, str]
    answer: str

    @property
    def distractors(self) -> list[str]:
        return [t for label, t in self.options.items() if label != self.answer]


@dataclass(frozen=True)
class Fact:
    id: str
    specialty: str
    fact: str
    key: str
    aliases: tuple[str, ...]
    reference: str
    statements: tuple[Statement, ...]
    recall: str
    mcq: Question
    mcq_rl: Question

    @property
    def names(self) -> tuple[str, ...]:
        """The key term and its aliases: what an answer must name to recall the fact."""
        return (self.key, *self.aliases)


# --------------------------------------------------------------------------------------------- text


def ngrams(text: str, n: int = NGRAM) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def mentions(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words (after normalisation)."""
    p = normalize(phrase)
    return bool(p) and f" {p} " in f" {normalize(text)} "


def names_key(answer: str, fact: Fact) -> bool:
    """Open recall's score: the answer names the key term (or an alias) and none of the held-out MCQ's wrong
    options (a list of candidates is not a recall)."""
    return any(mentions(answer, n) for n in fact.names) and not any(mentions(answer, d) for d in fact.mcq.distractors)


# --------------------------------------------------------------------------------------------- loading


def bundled_facts_path() -> Path:
    from medreason.readers import bundled_path

    return bundled_path(FACTS_FILE)


def load_facts(*paths: str | Path, check: bool = True) -> list[Fact]:
    """The facts of `paths` (default: the bundled set), in file order. A malformed row is a UserError naming the
    file and line; with `check`, so is the first broken rule of the set."""
    paths = paths or (bundled_facts_path(),)
    facts: list[Fact] = []
    for path in map(Path, paths):
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                facts.append(_parse(line, path, line_no))
    if check:
        found = problems(facts)
        if found:
            raise UserError(f"{found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    return facts


def _parse(line: str, path: Path, line_no: int) -> Fact:
    where = f"{path} line {line_no}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise UserError(f"{where}: not a JSON object")

    def text(value, name):
        if not isinstance(value, str) or not value.strip():
            raise UserError(f'{where}: field "{name}" must be non-empty text')
        return value.strip()

    def question(value, name):
        if not isinstance(value, dict):
            raise UserError(f'{where}: field "{name}" must be an object with question, options, answer')
        options = value.get("options")
        if not isinstance(options, dict) or list(options) != list(LETTERS):
            raise UserError(f'{where}: field "{name}.options" must map A, B, C, D (in order) to text')
        answer = value.get("answer")
        if answer not in LETTERS:
            raise UserError(f'{where}: field "{name}.answer" must be one of A, B, C, D')
        return Question(
            text(value.get("question"), f"{name}.question"),
            {k: text(v, f"{name}.options.{k}") for k, v in options.items()},
            answer,
        )

    statements = row.get("statements")
    if not isinstance(statements, list) or not statements:
        raise UserError(f'{where}: field "statements" must be a list of {{form, prompt, text}}')
    parsed = []
    for i, s in enumerate(statements):
        if not isinstance(s, dict):
            raise UserError(f'{where}: field "statements[{i}]" must be an object with form, prompt, text')
        parsed.append(
            Statement(text(s.get("form"), "form"), text(s.get("prompt"), "prompt"), text(s.get("text"), "text"))
        )
    aliases = row.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise UserError(f'{where}: field "aliases" must be a list of text')
    return Fact(
        id=text(row.get("id"), "id"),
        specialty=text(row.get("specialty"), "specialty"),
        fact=text(row.get("fact"), "fact"),
        key=text(row.get("key"), "key"),
        aliases=tuple(a.strip() for a in aliases),
        reference=text(row.get("reference"), "reference"),
        statements=tuple(parsed),
        recall=text(row.get("recall"), "recall"),
        mcq=question(row.get("mcq"), "mcq"),
        mcq_rl=question(row.get("mcq_rl"), "mcq_rl"),
    )


# --------------------------------------------------------------------------------------------- the rules


def problems(facts: list[Fact]) -> list[str]:
    """Every broken rule of the set (see the module docstring), one line each, naming the fact."""
    out: list[str] = []
    ids = [f.id for f in facts]
    out += [f"{i}: id repeats" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for f in facts:
        out += _own_problems(f)
    out += _cross_problems(facts)
    out += balance_problems(facts)
    out += benchmark_overlap(facts)
    return out


def _own_problems(f: Fact) -> list[str]:
    out = []
    forms = [s.form for s in f.statements]
    missing = [form for form in FORMS if form not in forms]
    if missing:
        out.append(f"{f.id}: no statement of form {', '.join(missing)} (needs one of each of {', '.join(FORMS)})")
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        out.append(f"{f.id}: unknown statement form {', '.join(unknown)}")
    for s in f.statements:
        if not any(mentions(s.text, n) for n in f.names):
            out.append(f"{f.id}: the {s.form} statement does not name the key term {f.key!r}")
    taught = set().union(*(ngrams(s.prompt) | ngrams(s.text) for s in f.statements))
    for name, q in (("mcq", f.mcq), ("mcq_rl", f.mcq_rl)):
        if not any(mentions(q.options[q.answer], n) for n in f.names):
            out.append(f"{f.id}: {name}'s correct option {q.options[q.answer]!r} does not name the key term {f.key!r}")
        if any(mentions(q.question, n) for n in f.names):
            out.append(f"{f.id}: {name}'s question names the key term {f.key!r}")
        shared = (ngrams(q.question) | set().union(*map(ngrams, q.options.values()))) & taught
        if shared:
            out.append(f"{f.id}: {name} shares the 5-gram {sorted(shared)[0]!r} with a training statement")
        if len({normalize(t) for t in q.options.values()}) != 4:
            out.append(f"{f.id}: {name} has two options with the same text")
    if any(mentions(f.recall, n) for n in f.names):
        out.append(f"{f.id}: the recall question names the key term {f.key!r}")
    shared = ngrams(f.recall) & taught
    if shared:
        out.append(f"{f.id}: the recall question shares the 5-gram {sorted(shared)[0]!r} with a training statement")
    shared = (ngrams(f.mcq.question) | set().union(*map(ngrams, f.mcq.options.values()))) & (
        ngrams(f.mcq_rl.question) | set().union(*map(ngrams, f.mcq_rl.options.values()))
    )
    if shared:
        out.append(f"{f.id}: mcq and mcq_rl share the 5-gram {sorted(shared)[0]!r}")
    return out


def _cross_problems(facts: list[Fact]) -> list[str]:
    out = []
    keys = {f.id: f.names for f in facts}
    for f in facts:
        texts = [s.prompt for s in f.statements] + [s.text for s in f.statements]
        texts += [f.recall, f.mcq.question, f.mcq_rl.question, *f.mcq.options.values(), *f.mcq_rl.options.values()]
        for other in facts:
            if other.id == f.id:
                continue
            for name in keys[other.id]:
                hit = next((t for t in texts if mentions(t, name)), None)
                if hit is not None:
                    out.append(f"{f.id}: names {other.id}'s key term {name!r} (in {hit[:60]!r})")
                    break
    statements = [(f.id, s.prompt + " " + s.text) for f in facts for s in f.statements]
    for f in facts:
        for name, q in (("mcq", f.mcq), ("mcq_rl", f.mcq_rl)):
            for d in q.distractors:
                where = next((fid for fid, t in statements if mentions(t, d)), None)
                if where is not None:
                    out.append(f"{f.id}: {name}'s wrong option {d!r} occurs in a training statement of {where}")
    return out


def benchmark_overlap(facts: list[Fact]) -> list[str]:
    """Facts whose key term is the correct answer of an item of the bundled benchmark or MCQ reasoning set:
    teaching them would move the old benchmark, which the experiment reads for forgetting."""
    from medreason.readers import bundled_path, read_file

    answers = {}
    for name in ("mcq.jsonl", "mcq_reasoning.jsonl"):
        for row in read_file(bundled_path(name)):
            answers.setdefault(normalize(row["options"][row["answer"]]), row.get("id"))
    out = []
    for f in facts:
        for n in f.names:
            if normalize(n) in answers:
                out.append(f"{f.id}: key term {n!r} is the correct answer of the bundled item {answers[normalize(n)]}")
    return out


def no_knowledge_rules(questions: list[Question]) -> dict[str, float]:
    """Accuracy of rules that need no knowledge: the best same letter, the longest option and the shortest option
    (ties share the credit, as medreason.mcq.trivial_baselines counts them)."""
    n = len(questions)
    letters = {label: sum(q.answer == label for q in questions) / n for label in LETTERS}

    def by_length(pick) -> float:
        total = 0.0
        for q in questions:
            sizes = {label: len(t) for label, t in q.options.items()}
            target = pick(sizes.values())
            tied = [label for label, s in sizes.items() if s == target]
            total += (q.answer in tied) / len(tied)
        return total / n

    return {"same_letter": max(letters.values()), "longest_option": by_length(max), "shortest_option": by_length(min)}


def balance_problems(facts: list[Fact]) -> list[str]:
    if not facts:
        return ["the fact set is empty"]
    out = []
    for name in ("mcq", "mcq_rl"):
        rules = no_knowledge_rules([getattr(f, name) for f in facts])
        for rule, accuracy in rules.items():
            if accuracy > 0.25 + BALANCE_MARGIN:
                out.append(
                    f"{name}: the {rule.replace('_', ' ')} rule scores {accuracy:.3f} > chance 0.25 + {BALANCE_MARGIN}"
                )
    return out


# --------------------------------------------------------------------------------------------- as tasks


def question_item(fact: Fact, which: str = "mcq", context: str = ""):
    """A fact's question (`mcq`, held out; `mcq_rl`, GRPO's) as an item of the MCQ task (medreason.mcq), grouped by
    specialty; `context` puts a text before the question (the retrieval reference puts a training statement)."""
    from medreason.mcq import MCQItem

    q = getattr(fact, which)
    return MCQItem(
        id=f"{fact.id}:{which}",
        question=q.question,
        options=dict(q.options),
        answer=q.answer,
        context=context,
        group=fact.specialty,
        split=which,
    )


def statement_rows(facts: list[Fact], statements: int = len(FORMS)) -> list[dict]:
    """SFT rows (prompt and completion messages, no system prompt) of each fact's first `statements` training
    statements, in FORMS order: 1 is the definition alone, 4 all of them."""
    order = {form: i for i, form in enumerate(FORMS)}
    rows = []
    for f in facts:
        for s in sorted(f.statements, key=lambda s: order.get(s.form, len(order)))[:statements]:
            rows.append({"fact": f.id, "form": s.form, "prompt": s.prompt, "text": s.text, "specialty": f.specialty})
    return rows


# --------------------------------------------------------------------------------------------- the halves


def assign_halves(facts: list[Fact], seed: int) -> dict[str, list[Fact]]:
    """Taught and untaught halves, drawn at random with `seed` within each specialty (an odd one gives its extra
    fact to the half a coin flip picks), each half in file order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_specialty: dict[str, list[Fact]] = {}
    for f in facts:
        by_specialty.setdefault(f.specialty, []).append(f)
    taught_ids = set()
    for specialty in sorted(by_specialty):
        group = by_specialty[specialty]
        order = rng.permutation(len(group))
        k = len(group) // 2 + (len(group) % 2 and rng.random() < 0.5)
        taught_ids |= {group[i].id for i in order[:k]}
    return {
        "taught": [f for f in facts if f.id in taught_ids],
        "untaught": [f for f in facts if f.id not in taught_ids],
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "check":
        print("usage: python -m medreason.facts check FILE [FILE ...]", file=sys.stderr)
        return 2
    try:
        facts = load_facts(*argv[1:], check=False)
    except UserError as e:
        print(e)
        return 2
    found = problems(facts)
    for line in found:
        print(line)
    rules = {name: no_knowledge_rules([getattr(f, name) for f in facts]) for name in ("mcq", "mcq_rl")}
    letters = {label: sum(f.mcq.answer == label for f in facts) for label in LETTERS}
    print(f"{len(facts)} facts; {len(found)} problems; mcq letters {letters}; no-knowledge rules {rules}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
