"""Which option did the model choose? The extraction behind medreason.mcq.extract_choice and medreason.mcq.grade
(the MCQ task's grading, which evaluation and the GRPO rewards call).

    from medreason.mcq import extract_choice
    extract_choice("<think>...</think>\\n\\nThe answer is (C).", {"A": "...", "B": "...", "C": "...", "D": "..."})  # "C"
    extract_choice("No. The trial did not show ...", {"yes": "yes", "no": "no", "maybe": "maybe"})           # "no"

`options` maps label -> option text in display order: letters ("A".."J") for exam questions, or free labels
where label == text (yes / no / maybe). The result is a key of `options`, or None when the output does not
say which option it chose, or says several: the extractor never guesses among them.

Where it looks: the text after the last `</think>` (or `## Final Response`) first; when there is none (a
`<think>` block left open by the token budget) or nothing is found there, the whole text, but then only an
explicit statement ("the answer is C") counts, because reasoning mentions every option on the way.

What counts, strongest first; the first level that finds anything decides, and if what it finds disagrees
the answer is None:
1. an explicit statement: "The answer is (C)", "Answer: C", "Final answer: **C**", "Correct option - c)",
   "C is correct", "The answer is bicuspid aortic valve", "Answer: no", and, for lettered options, "The most
   likely diagnosis is acute aortic dissection, given ..." (one option named in that clause);
2. a line that is only the choice: the first or last line of the answer is "C", "(C)", "**C.**",
   "C. Bicuspid aortic valve", or an option's text; a bold span that is one of those;
3. only for lettered options: the answer names exactly one option's text (not for free labels such as
   yes / no, which are ordinary words).
"""

from __future__ import annotations

import re

from medreason.template import answer_region, without_tags
from medreason.text import normalize as _norm

_MARKUP = re.compile(r"[*_`#>]+")
_VERB = r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be|here\s+is|=))?\s*(?:[:=\-–—]\s*)?"
_QUALIFIER = r"\b(?:final|correct|right|best|most\s+likely|most\s+appropriate)\s+"
# What introduces a choice: "answer is", "Answer:", "the correct option would be", "I'd go with". A bare
# "Option A:" is not one: reasoning walks through every option that way.
_STATEMENT = re.compile(
    rf"(?:{_QUALIFIER})?\banswer\b(?:\s*\([^)]*\))?{_VERB}"
    rf"|{_QUALIFIER}(?:option|choice|response)\b{_VERB}"
    r"|\b(?:i\s+(?:would\s+)?(?:choose|select|pick)|i'?d\s+(?:choose|select|pick|go\s+with)|i\s+will\s+go\s+with)\s+"
    # "The most likely diagnosis is ...", "the best initial treatment would be ...": how the SFT corpus answers
    r"|\b(?:most\s+likely|most\s+appropriate|best|correct|preferred)\s+(?:[\w-]+\s+){0,4}?(?:is|would\s+be)\s+"
    r"(?:probably\s+|likely\s+)?",
    re.I,
)
# "C is correct", "(C) is the best answer", "Option c is right": the choice before the verdict, at the start
# of a line or sentence or after "option" ("vitamin D is the most likely cause" names no option).
_VERDICT = re.compile(
    r"(?:^[\s*]*|[.!?]\s+[\s*]*|\b(?P<word>option|choice)\s+)(?P<open>\()?(?P<letter>[A-Ja-j])(?(open)\))\*{0,2}"
    r"\s+(?:is|would\s+be)\s+(?:the\s+)?(?:correct|right|best|most\s+likely)\b",
    re.I | re.M,
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.I)
_LETTER = re.compile(
    r"^(?:option\s+|choice\s+)?(?P<open>[(\[])?(?P<letter>[A-Ja-j])(?(open)[)\]])"
    r"(?P<delim>[.):,;]?)(?=\s|$|[.,;!?])\s*(?P<rest>.*)$",
    re.I | re.S,
)


def choose(text: str | None, options: dict[str, str], lettered: bool) -> str | None:
    """The label (a key of `options`) the output chose, or None if it chose none or several. `lettered`: the
    options are labelled A, B, C... (medreason.mcq.lettered, the one rule; callers go through
    medreason.mcq.extract_choice)."""
    if not text or not options:
        return None
    region, closed = answer_region(text)
    found = _extract(region, options, lettered, explicit_only=not closed)
    if found is _CONFLICT:
        return None
    if found is None and closed:  # the answer after </think> says nothing: the reasoning may have
        found = _extract(without_tags(text), options, lettered, explicit_only=True)
    return None if found is _CONFLICT else found


# --------------------------------------------------------------------------------------------- levels

_CONFLICT = object()


def _extract(region: str, options: dict[str, str], lettered: bool, explicit_only: bool):
    """A label, None (nothing found), or _CONFLICT (the strongest evidence disagrees)."""
    levels = [_statements]
    if not explicit_only:
        levels += [_lines] + ([_mentions] if lettered else [])
    for level in levels:
        labels = set(level(region, options, lettered))
        if len(labels) == 1:
            return labels.pop()
        if len(labels) > 1:
            return _CONFLICT
    return None


def _statements(region: str, options: dict[str, str], lettered: bool):
    for m in _STATEMENT.finditer(region):
        tail = region[m.end() :].split("\n", 1)[0]
        clause = re.split(r"[.;,:!?]|\s(?:because|given|since|as|due|with|which|but|not)\s", tail)[0]
        if re.search(r"\b(?:or|and/or|either)\b", clause, re.I):
            continue  # "X or Y" is a hedge, not a choice
        label = _resolve(tail, options, lettered, prefix=True)
        if label is None and lettered:
            # "... is acute aortic dissection, given ...": the option named in the clause the statement opens
            # (not for free labels: "the answer is no longer clear" names no option)
            named = _named(clause, options)
            label = named.pop() if len(named) == 1 else None
        if label is not None:
            yield label
    if lettered:
        for m in _VERDICT.finditer(region):
            letter = m.group("letter")
            # lower case only when marked: "a is correct" is rare, "(a) is correct" is not
            if letter.upper() in options and (letter.isupper() or m.group("open") or m.group("word")):
                yield letter.upper()


def _lines(region: str, options: dict[str, str], lettered: bool):
    lines = [ln for ln in (s.strip() for s in region.splitlines()) if _MARKUP.sub("", ln).strip()]
    for line in lines[:1] + lines[-1:]:
        label = _resolve(line, options, lettered, prefix=False)
        if label is not None:
            yield label
    for span in re.findall(r"\*\*(.+?)\*\*", region):
        label = _resolve(span, options, lettered, prefix=False)
        if label is not None:
            yield label


def _mentions(region: str, options: dict[str, str], lettered: bool):
    """Lettered options only: the answer names one option's text; several distinct ones are a conflict."""
    return _named(region, options)


def _named(text: str, options: dict[str, str]) -> set[str]:
    """Labels whose option text appears in `text` as whole words; an option contained in another named one
    ("hypertension" inside "pulmonary hypertension") does not count separately."""
    body = f" {_norm(text)} "
    hits = {label for label, opt in options.items() if _norm(opt) and f" {_norm(opt)} " in body}
    return {h for h in hits if not any(h != o and f" {_norm(options[h])} " in f" {_norm(options[o])} " for o in hits)}


# --------------------------------------------------------------------------------------------- resolving


def _resolve(fragment: str, options: dict[str, str], lettered: bool, prefix: bool) -> str | None:
    """The label a fragment names. prefix=True: the fragment *starts* with the choice (the rest of a
    sentence after "answer is"); prefix=False: the fragment is the choice, nothing else."""
    s = _MARKUP.sub("", fragment).strip().strip("\"'“”‘’").strip()
    if not s:
        return None
    if lettered:
        m = _LETTER.match(s)
        if m and m.group("letter").upper() in options:
            letter, rest = m.group("letter"), m.group("rest")
            marked = bool(m.group("open") or m.group("delim"))  # "(C)", "C.", "C)", "C:"
            bare = not re.search(r"\w", rest)
            label = letter.upper()
            if bare:
                return label
            if prefix:
                if re.match(r"(?:or|and|/|,)\s*\(?[A-Ja-j]\b", rest):
                    return None  # "C or D": several, not a choice
                # "answer is a bicuspid valve", "Answer: I think ...": an article or a pronoun, not a letter
                article = not marked and letter in "aAI" and rest[:1].islower()
                if not article and (letter.isupper() or marked):
                    return label
            elif marked and _starts_with_option(rest, options[label], whole=True):
                return label  # "C. Bicuspid aortic valve"
    return _by_text(s, options, prefix, lettered)


def _by_text(s: str, options: dict[str, str], prefix: bool, lettered: bool = True) -> str | None:
    """The option whose text the fragment is (or starts with, for prefix); the longest wins a tie of
    prefixes ("Hypertension" vs "Hypertension with hypokalemia") because it is the exact one. A free label
    (yes / no / maybe: ordinary words) must end its phrase: "no." or "no, because", never "no longer"."""
    s = _ARTICLE.sub("", s.strip())
    best, best_len = None, 0
    for label, opt in options.items():
        if not _starts_with_option(s, opt, whole=not prefix) or len(_norm(opt)) <= best_len:
            continue
        if (
            prefix
            and not lettered
            and not re.match(
                rf"{re.escape(opt.strip())}(?:\s*(?:$|[.,;:!?)\]])|\s+(?:because|since|given|as)\b)", s, re.I
            )
        ):
            continue
        best, best_len = label, len(_norm(opt))
    return best


def _starts_with_option(s: str, option: str, whole: bool) -> bool:
    n, o = _norm(s), _norm(_ARTICLE.sub("", option.strip()))
    if not o:
        return False
    if whole:  # the fragment is the option, at most followed by the end of its sentence
        if n == o:
            return True
        first_sentence = re.split(r"(?<=[.!?])\s|\n|;", s, maxsplit=1)[0]
        return _norm(_ARTICLE.sub("", first_sentence)) == o
    return n == o or n.startswith(o + " ")
