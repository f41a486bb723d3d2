"""The prose check (book/_ext/prose_check.py): a number typed in a chapter's prose is backed by a cell of its page.
Every chapter of the table of contents is checked (the datasheet and reference pages are not chapters)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import prose_check  # noqa: E402

CHECKED = prose_check.CHECKED


def test_every_chapter_is_checked():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]] + [c["file"] for part in toc.get("parts", [toc]) for c in part.get("chapters", [])]
    chapters = {Path(p).name for p in pages} - {"datasheet", "reference"}
    assert chapters == set(CHECKED)


@pytest.mark.parametrize("chapter", CHECKED)
def test_no_typed_number_in_the_prose(chapter):
    problems = prose_check.typed_numbers(ROOT / "book" / f"{chapter}.md")
    assert not problems, "numbers typed in prose that no glue or assert backs:\n" + "\n".join(problems)


def test_the_check_finds_a_typed_number_and_accepts_backed_ones(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "---\nkernelspec:\n  name: python3\n---\n\n# Step 0\n\n"
        "It took 27 steps, the loss fell to {glue:text}`loss:.3f` in 2024 (Section 7), `--max_steps 9`.\n\n"
        "The batch holds 4 examples on SmolLM2-135M in bf16.\n\n"
        "```{code-cell} ipython3\nassert batch_size == 4\n```\n",
        encoding="utf-8",
    )
    problems = prose_check.typed_numbers(page)
    assert len(problems) == 1 and ": 27 in " in problems[0], problems
