"""The book's Sphinx extension: chapters execute in table-of-contents order.

The root `_config.yml` loads it as a Jupyter Book local extension (Jupyter Book puts `book/_ext` on sys.path):

    sphinx:
      local_extensions:
        medreason_sphinx: book/_ext

Reading order: Sphinx reads, and so myst-nb executes, documents in alphabetical order, which would run
`evaluation` and `inference` before `training`. Each of those finds no adapter yet and trains one through
`ensure_adapter()`, and then the training chapter trains again: two trainings per cold build. Reading in the
order of `_toc.yml` makes the training chapter train first and the later chapters reuse its adapter;
chapters still run in any order on their own.

Notebook downloads: every chapter page offers its `.ipynb` in the page's download menu (sphinx-book-theme's
".ipynb" entry, shown when the page context names `ipynb_source`). The notebook is the chapter converted by
jupytext, as `make notebooks` does, written to `_build/html/_sources/<chapter>.ipynb`. Saved into any folder
of a clone, it runs as it is: its first cell finds the checkout by walking up from the working directory.
(The theme copies an executed notebook there only when a launch service such as Binder is configured;
this book names none.)

Formulas offline: the pages load MathJax 3 from the site itself (`_static/mathjax/tex-chtml.js`), not from a
CDN, so a site opened from `_build/html` with no network still renders its formulas. The files come from the
PyPI package `sphinx-mathjax-offline` (MathJax 3.2.2, in the `book` extra); only what tex-chtml loads is copied
(the component, the TeX extensions it autoloads, the CHTML fonts, the menu and accessibility parts).

One click to a GPU: where the build knows the repository it was built from (`MEDREASON_REPOSITORY=owner/name`,
which the Pages workflow sets from `github.repository`, with `MEDREASON_REF` = the commit), every chapter page
opens with an "Open in Colab" link to `<chapter>.ipynb` on the repository's `colab` branch. The workflow's
`colab` job writes those notebooks with this file's command line and pushes them there:

    MEDREASON_REPOSITORY=owner/name MEDREASON_REF=<sha> python book/_ext/medreason_sphinx.py colab <folder>

Each is the chapter with one cell in front that, on Colab, clones the repository at that commit, installs it
and moves into it; the chapter's own set-up line then finds the clone and, with CUDA present, picks the GPU
recipe (`medreason.book`). A build without MEDREASON_REPOSITORY (a local `make book`) has no Colab links.

It lives in book/_ext/, not in the installed package: only the book needs it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

# MathJax 3's combined TeX-to-CHTML component, and the folders it loads from at run time
MATHJAX_PACKAGE = "sphinx-mathjax-offline"
MATHJAX_ENTRY = "tex-chtml.js"
MATHJAX_PARTS = (MATHJAX_ENTRY, "input", "output/chtml", "ui", "a11y", "adaptors")


def setup(app):
    """Sphinx entry point."""
    app.connect("config-inited", _local_mathjax_path)
    app.connect("builder-inited", _check_prose)
    app.connect("build-finished", _copy_mathjax)
    app.connect("env-before-read-docs", _read_in_toc_order)
    # before sphinx-book-theme builds its header buttons (priority 501), so that its download menu lists the .ipynb
    app.connect("html-page-context", _offer_notebook_download, priority=500)
    app.connect("html-page-context", _colab_link)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ------------------------------------------------------------------------------------------ reading order


def toc_order(site_map) -> list[str]:
    """Docnames of a sphinx-external-toc SiteMap, depth first from the root: the reading order."""
    order: list[str] = []

    def walk(name: str):
        if name in order:
            return
        order.append(name)
        doc = site_map.get(name) if hasattr(site_map, "get") else None
        for child in doc.child_files() if doc is not None else []:
            walk(child)

    walk(site_map.root.docname)
    return order


def _read_in_toc_order(app, env, docnames: list[str]):
    site_map = getattr(env, "external_site_map", None) or getattr(app.config, "external_site_map", None)
    if site_map is None:  # not a Jupyter Book / external-toc project: keep Sphinx's order
        return
    rank = {name: i for i, name in enumerate(toc_order(site_map))}
    docnames.sort(key=lambda name: (rank.get(name, len(rank)), name))


# ------------------------------------------------------------------------------------------ notebook downloads


def chapter_notebook(source: str | Path):
    """The chapter `source` (a MyST Markdown notebook) as an nbformat notebook without outputs, or None when
    the page is not a notebook (no kernelspec in its front matter)."""
    import jupytext

    notebook = jupytext.read(source)
    return notebook if notebook.metadata.get("kernelspec") else None


def write_chapter_notebook(source: str | Path, dest: str | Path) -> Path | None:
    """Write `source` as `dest` (.ipynb); returns dest, or None when the page is not a notebook."""
    import jupytext

    notebook = chapter_notebook(source)
    if notebook is None:
        return None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, dest, fmt="ipynb")
    return dest


def _offer_notebook_download(app, pagename, templatename, context, doctree):
    if app.builder.format != "html" or doctree is None or pagename not in app.env.all_docs:
        return
    source = Path(app.env.doc2path(pagename))
    if source.suffix != ".md":
        return
    if write_chapter_notebook(source, Path(app.outdir) / "_sources" / f"{pagename}.ipynb") is not None:
        context["ipynb_source"] = f"{pagename}.ipynb"


# ------------------------------------------------------------------------------------------ MathJax, offline


def mathjax_source() -> Path:
    """The folder of MathJax files that the sphinx-mathjax-offline package ships."""
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"{MATHJAX_PACKAGE} is not installed: the site serves MathJax itself (make setup installs it, "
            "from the book extra)"
        )
    folder = Path(spec.origin).parent / "static" / "mathjax"
    if not (folder / MATHJAX_ENTRY).is_file():
        raise RuntimeError(f"{MATHJAX_PACKAGE} has no {MATHJAX_ENTRY} in {folder}")
    return folder


def _local_mathjax_path(app, config):
    mathjax_source()  # fail at the start of a build, not at its end
    config.mathjax_path = f"mathjax/{MATHJAX_ENTRY}"  # relative: served from the site's _static/


def copy_mathjax(dest: str | Path) -> Path:
    """Copy the MathJax parts the pages load into `dest` (the site's _static/mathjax)."""
    source, dest = mathjax_source(), Path(dest)
    for part in MATHJAX_PARTS:
        src = source / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    return dest


def _copy_mathjax(app, exception):
    if exception is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static" / "mathjax")


# ------------------------------------------------------------------------------------------ Colab

COLAB_BRANCH = "colab"  # the branch the workflow's colab job pushes the notebooks to
REPOSITORY_ENV, REF_ENV = "MEDREASON_REPOSITORY", "MEDREASON_REF"
COLAB_CELL = """\
# On Colab: clone the repository this page was built from, at that commit, install it and work in it.
# Anywhere else (a clone of your own) this cell does nothing.
import os, subprocess, sys

REPOSITORY, COMMIT = "{repository}", "{ref}"
if "google.colab" in sys.modules and not os.path.isfile("pyproject.toml"):  # not yet inside it
    if not os.path.isdir("medreason-checkout"):
        url = f"https://github.com/{{REPOSITORY}}"
        subprocess.run(["git", "clone", "-q", url, "medreason-checkout"], check=True)
        subprocess.run(["git", "-C", "medreason-checkout", "checkout", "-q", COMMIT], check=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "-e", "medreason-checkout[book]"]
        subprocess.run(pip, check=True)
    os.chdir("medreason-checkout")
    sys.path.insert(0, os.getcwd())  # the editable install is seen by new processes only
"""


def repository(env=None) -> tuple[str, str] | None:
    """(owner/name, ref) the site is built from, or None when the build was not told (no Colab links)."""
    env = os.environ if env is None else env
    name = env.get(REPOSITORY_ENV, "").strip()
    if not name:
        return None
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"{REPOSITORY_ENV}={name!r} is not owner/name")
    return name, env.get(REF_ENV, "").strip() or "main"


def colab_url(repo: str, page: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/{COLAB_BRANCH}/{page}.ipynb"


def colab_notebook(source: str | Path, repo: str, ref: str):
    """The chapter as the Colab notebook: the clone-and-install cell, then the chapter's own cells."""
    import nbformat

    notebook = chapter_notebook(source)
    if notebook is None:
        return None
    notebook.cells.insert(0, nbformat.v4.new_code_cell(COLAB_CELL.format(repository=repo, ref=ref)))
    notebook.metadata["accelerator"] = "GPU"  # Colab offers a GPU runtime for it
    notebook.metadata.setdefault("colab", {})["provenance"] = []
    return notebook


def notebook_chapters(book: Path) -> list[Path]:
    """The chapters of `book` (its _toc.yml, in reading order) that are notebooks."""
    from sphinx_external_toc.parsing import parse_toc_yaml

    return [
        book / f"{name}.md"
        for name in toc_order(parse_toc_yaml(book / "_toc.yml"))
        if chapter_notebook(book / f"{name}.md")
    ]


def write_colab_notebooks(book: str | Path, dest: str | Path, env=None) -> list[Path]:
    """Write <dest>/<chapter>.ipynb for every notebook chapter: what the colab branch holds."""
    import jupytext

    found = repository(env)
    if found is None:
        raise SystemExit(f"medreason_sphinx: set {REPOSITORY_ENV}=owner/name (and {REF_ENV}=<commit>)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source in notebook_chapters(Path(book)):
        path = dest / f"{source.stem}.ipynb"
        jupytext.write(colab_notebook(source, *found), path, fmt="ipynb")
        written.append(path)
    return written


def _colab_link(app, pagename, templatename, context, doctree):
    found = repository()
    if found is None or app.builder.format != "html" or doctree is None or "body" not in context:
        return
    source = Path(app.env.doc2path(pagename))
    if source.suffix != ".md" or chapter_notebook(source) is None:
        return
    link = (
        f'<p class="medreason-colab"><a class="reference external" href="{colab_url(found[0], pagename)}">'
        "Open this chapter in Colab</a>: a notebook on a free cloud GPU that clones this repository at the "
        "commit the page was built from, installs it and trains with the GPU recipe.</p>\n"
    )
    context["body"] = link + context["body"]


# ------------------------------------------------------------------------------------------ the prose check


def _check_prose(app):
    """Fail the build on a number typed in the prose of a checked chapter (prose_check.py beside this file)."""
    import prose_check
    from sphinx.errors import ExtensionError

    book = Path(app.srcdir)
    # the chapters of this book that the check covers (a smaller book, as the tests build, holds only some of them;
    # tests/test_prose.py checks that every chapter of this repository's toc is covered)
    pages = [book / f"{name}.md" for name in prose_check.CHECKED if (book / f"{name}.md").is_file()]
    problems = [p for page in pages for p in prose_check.typed_numbers(page)]
    if problems:
        raise ExtensionError("numbers typed in prose that no glue or assert backs:\n" + "\n".join(problems))


if __name__ == "__main__":  # python book/_ext/medreason_sphinx.py colab <folder>
    if len(sys.argv) != 3 or sys.argv[1] != "colab":
        raise SystemExit("usage: python book/_ext/medreason_sphinx.py colab <folder>")
    for written in write_colab_notebooks(Path(__file__).resolve().parents[1], sys.argv[2]):
        print(written)
