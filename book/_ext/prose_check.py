"""The build-time prose check (STYLE.md, "Text that stays true"): a number typed in a chapter's prose must be
backed by a cell of the same page, or the check fails, naming the line.

    python book/_ext/prose_check.py book/*.md        # exit 1 and one line per typed number, or nothing

What counts as prose: the chapter's Markdown outside code cells, fenced blocks, inline code, math ($...$,
$$...$$), roles (`{glue:text}`, `{cite}`, `{doc}` ...), link targets, directive options and comments.
A number there is backed when a cell renders it (a glue role, which is not prose), or when it appears as a
literal in a code cell of the same page: asserted there (the build fails if the assertion stops holding), or
the very setting the page's code runs with (a budget of 160 tokens, a temperature of 0.3).

The allow-list (documented, small): years (1900-2099) and paper section, chapter, part, exercise and step numbers
("Section 7", "Part 3.1", "Exercise 2", "Step 0"); library and Python versions ("TRL 1.16", "Python 3.11"); numbered-list markers; numbers glued to letters are names, not
figures (SmolLM2-135M, Qwen2.5-7B, bf16, Q4_1, 4-bit, H100, ZeRO-2).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# The chapters the build checks (book/_ext/medreason_sphinx.py fails the build on a typed number in them): every
# chapter; the datasheet page includes the data's datasheet, whose figures tests/test_data.py and
# tests/test_facts.py compute, and the reference page is generated API documentation.
CHECKED = (
    "intro", "lora_theory", "data_prep", "training", "inference", "evaluation", "knowledge", "grpo", "scaling_up",
)  # fmt: skip
FENCE = re.compile(r"^(`{3,}|~{3,}|:{3,}).*?^\1\s*$", re.S | re.M)
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)
STRIP = [
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"\$[^$\n]+\$"),  # inline math
    re.compile(r"\{[\w:-]+\}`[^`]*`"),  # roles: glue, cite, doc, py:func ...
    re.compile(r"``[^`]*``|`[^`\n]*`"),  # inline code
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<[^>\n]+>"),  # autolinks and HTML
    re.compile(r"^%.*$", re.M),  # MyST comments
    re.compile(r"^:[\w-]+:.*$", re.M),  # directive options
]
NUMBER = re.compile(r"(?<![\w.\-/])\d+(?:[.,]\d+)*(?![\w\-/])")
ALLOWED_BEFORE = re.compile(
    r"(?:Section|Sections|Chapter|Part|Exercise|exercise|Step|step|TRL|PyTorch|torch|Python)\s*$"
)
YEAR = re.compile(r"(?:19|20)\d\d")


def front_matter_end(text: str) -> int:
    return text.index("\n---\n", 4) + 5 if text.startswith("---\n") else 0


def typed_numbers(path: Path) -> list[str]:
    """'file:line: number in "context"' for every number in the prose that nothing on the page backs."""
    text = path.read_text(encoding="utf-8")
    asserted = set()
    for cell in CODE_CELL.findall(text):
        for line in cell.splitlines():
            asserted |= {n.replace(",", "").replace("_", "").rstrip(".") for n in re.findall(r"\d[\d_,.]*", line)}
    head = text[: front_matter_end(text)]
    prose = "\n" * head.count("\n") + text[len(head) :]
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731 -- keep line numbers
    prose = FENCE.sub(blank, prose)
    for pattern in STRIP:
        prose = pattern.sub(blank, prose)
    found = []
    for number, line in enumerate(prose.splitlines(), 1):
        if re.match(r"\s*\d+\.\s", line):  # a numbered list's marker
            line = re.sub(r"^(\s*)\d+\.", r"\1  ", line)
        for match in NUMBER.finditer(line):
            value = match.group(0)
            if YEAR.fullmatch(value) or ALLOWED_BEFORE.search(line[: match.start()]):
                continue
            if value.replace(",", "") in asserted or value.rstrip("0").rstrip(".") in asserted:
                continue
            found.append(f"{path.name}:{number}: {value} in {line.strip()[:90]!r}")
    return found


def main(argv: list[str]) -> int:
    problems = [problem for name in argv for problem in typed_numbers(Path(name))]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
