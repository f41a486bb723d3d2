"""The repository layout that `jupyter-book build book/` relies on, and a tiny book built the same way.

Jupyter Book 1.x finds `_config.yml` by walking up from `book/` and writes the site beside it, in
`<root>/_build/html`, but reads the table of contents from `book/_toc.yml` only: the top-level `_toc.yml` is
reached through a relative symlink. The tiny book repeats that layout in a temporary folder, so a change of
Jupyter Book or of the layout that moves the site (or loses the toc) fails here in seconds, not after a
full book build.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"


def test_repository_layout():
    for name in ("_config.yml", "_toc.yml", "LICENSE", "README.md", "pixi.toml", "book", "medreason", ".github"):
        assert (REPO / name).exists(), f"{name} is missing at the repository root"
    link = REPO / "book" / "_toc.yml"
    assert link.is_symlink() and os.readlink(link) == "../_toc.yml", "book/_toc.yml must be a symlink to ../_toc.yml"
    assert not (REPO / "book" / "_config.yml").exists(), "book/_config.yml would shadow the top-level _config.yml"
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    for entry in [toc["root"], *(c["file"] for c in toc["chapters"])]:
        assert (REPO / "book" / f"{entry}.md").is_file(), f"_toc.yml names {entry}, but book/{entry}.md is missing"


# The design card's top level (STYLE.md, README "Layout"), and the tooling's files beside it. Anything else at the
# top is a stray: issue 32 found a test run's MLflow store (mlflow.db, mlartifacts/) committed there.
DESIGN_CARD = {
    "_config.yml",
    "_toc.yml",
    "book",
    "medreason",
    "results",
    "lora_adapter",
    ".github",
    "pixi.toml",
    "README.md",
    "configs",
    "tests",
    "benchmarks",
    "pyproject.toml",
    ".ci",
    "LICENSE",
}
TOOLING = {"Makefile", "requirements.lock", ".gitignore", ".pre-commit-config.yaml"}


def _top_level_entries() -> set[str]:
    """What the repository holds at the top: tracked files and files that git would add (not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.fail(f"git ls-files failed in {REPO}: {listed.stderr.strip()}")
    return {path.split("/")[0] for path in listed.stdout.split("\0") if path}


def test_top_level_holds_only_the_design_cards_entries():
    stray = sorted(_top_level_entries() - DESIGN_CARD - TOOLING)
    assert not stray, f"not part of the layout at the repository's top: {stray}"


def test_mlflow_stores_at_the_top_are_ignored():
    """A store that a run writes at the top (MLflow's default is ./mlflow.db) is never committed."""
    probe = subprocess.run(
        ["git", "check-ignore", "mlflow.db", "mlartifacts/x", "mlruns/x"], cwd=REPO, capture_output=True, text=True
    )
    assert probe.stdout.split() == ["mlflow.db", "mlartifacts/x", "mlruns/x"], probe.stdout + probe.stderr


def test_gitignore_and_clean_follow_the_layout():
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").split()
    assert "_build/" in ignored, ".gitignore does not ignore the top-level _build/"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = makefile[makefile.index("\nclean:") :].splitlines()[2:]
    commands = " ".join(
        line for line in recipe[: next((i for i, l in enumerate(recipe) if not l.startswith("\t")), None)]
    )
    assert "rm -rf _build " in commands + " ", f"make clean does not remove the top-level _build: {commands!r}"


@pytest.mark.infra
def test_tiny_book_builds_into_top_level_build(tmp_path):
    """_config.yml and _toc.yml at the top, book/_toc.yml -> ../_toc.yml, one chapter: the site lands in
    <top>/_build/html, with the chapter's page and the toc's order."""
    (tmp_path / "_config.yml").write_text(
        "title: tiny\nauthor: medreason tests\nonly_build_toc_files: true\n"
        "exclude_patterns: [_build]\nexecute:\n  execute_notebooks: 'off'\n"
        "html:\n  use_repository_button: false\n",
        encoding="utf-8",
    )
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapter\n", encoding="utf-8")
    book = tmp_path / "book"
    book.mkdir()
    (book / "_toc.yml").symlink_to("../_toc.yml")
    (book / "intro.md").write_text("# Tiny book\n\nThe root page.\n", encoding="utf-8")
    (book / "chapter.md").write_text("# A chapter\n\nText that the test looks for: layout-guard.\n", encoding="utf-8")

    proc = subprocess.run(
        [str(JUPYTER_BOOK), "build", "book/"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    site = tmp_path / "_build" / "html"
    chapter = site / "chapter.html"
    assert chapter.is_file(), f"no {chapter}; built: {sorted(p.name for p in site.glob('*.html'))}"
    assert "layout-guard" in chapter.read_text(encoding="utf-8")
    assert (site / "intro.html").is_file()
    assert not (book / "_build").exists(), "the site was built inside book/: _config.yml was not found at the top"
    # the toc was read: the root page links to the chapter as the next page
    assert 'href="chapter.html"' in (site / "intro.html").read_text(encoding="utf-8")
