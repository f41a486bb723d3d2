"""Chapters as notebooks: the first cell that finds the checkout, the book's local Sphinx extension.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_notebooks.py -q
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
EXT = BOOK / "_ext"
CHAPTERS = sorted(BOOK.glob("*.md"))


def _first_code_cell(chapter: Path) -> str:
    match = re.search(r"^```\{code-cell\}[^\n]*\n(.*?)^```$", chapter.read_text(encoding="utf-8"), re.S | re.M)
    assert match, f"{chapter.name}: no code cell"
    return match.group(1)


def _clone_copy(dest: Path) -> Path:
    """The parts of a checkout that the first cell and the chapter set-up look at."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "configs", dest / "configs")
    shutil.copytree(EXT, dest / "book" / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


# ------------------------------------------------------------------------------------------ the first cell


def test_every_chapter_starts_with_the_same_setup_cell():
    """One first cell for every chapter, and none imports the set-up from the installed package."""
    assert len(CHAPTERS) >= 7, [c.name for c in CHAPTERS]
    first = {c.name: _first_code_cell(c) for c in CHAPTERS}
    for name, cell in first.items():
        assert "from medreason_chapter import setup_chapter" in cell, f"{name}: first cell does not set up the chapter"
        assert "root = setup_chapter(root)" in cell, name
        assert "medreason.book" not in cell, name
    # intro.md prints a line after the set-up; the set-up itself is the same text everywhere
    setups = {name: cell.split("root = setup_chapter(root)")[0] for name, cell in first.items()}
    assert len(set(setups.values())) == 1, f"first cells differ: {sorted(setups)}"


def test_setup_is_not_in_the_installed_package():
    assert not (ROOT / "medreason" / "book.py").exists()
    assert not any("medreason.book" in c.read_text(encoding="utf-8") for c in CHAPTERS)


@pytest.mark.parametrize("where", ["book", "book/_notebooks", "downloads/deeper"])
def test_first_cell_finds_the_checkout_from_any_folder(tmp_path, where):
    """Run the chapters' first cell in a fresh interpreter from a folder of a clone: it moves to the clone's
    root and sends medreason's log lines to stdout, as in the book build."""
    clone = _clone_copy(tmp_path / "clone")
    folder = clone / where
    folder.mkdir(parents=True, exist_ok=True)
    code = _first_code_cell(BOOK / "data_prep.md") + (
        "import logging, os\n"
        "print('cwd', os.getcwd())\n"
        "print('root', root)\n"
        "logging.getLogger('medreason.data').info('hello')\n"
        "logging.getLogger('transformers').info('not shown')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"cwd {clone.resolve()}" in lines, proc.stdout
    assert f"root {clone.resolve()}" in lines, proc.stdout
    assert "medreason: hello" in lines, proc.stdout
    assert "not shown" not in proc.stdout and proc.stderr == "", (proc.stdout, proc.stderr)


def test_first_cell_outside_a_checkout_fails(tmp_path):
    code = _first_code_cell(BOOK / "data_prep.md")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "StopIteration" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------ Sphinx extension


def test_config_loads_the_local_extension():
    """The root _config.yml names book/_ext/medreason_sphinx as a local extension, and Jupyter Book resolves it."""
    from jupyter_book.config import get_final_config

    config, _ = get_final_config(user_yaml=ROOT / "_config.yml", sourcedir=BOOK,
                                 cli_config={"latex_individualpages": False})
    assert "medreason_sphinx" in config["extensions"]
    assert str(EXT) in sys.path
    import medreason_sphinx

    assert Path(medreason_sphinx.__file__).resolve() == (EXT / "medreason_sphinx.py").resolve()


def test_toc_order_reads_training_before_its_users():
    from sphinx_external_toc.parsing import parse_toc_yaml

    sys.path.insert(0, str(EXT))
    import medreason_sphinx

    order = medreason_sphinx.toc_order(parse_toc_yaml(BOOK / "_toc.yml"))
    assert order[0] == "intro"
    assert order.index("training") < order.index("inference") < order.index("evaluation"), order
    assert sorted(order) == sorted(c.stem for c in CHAPTERS), order
