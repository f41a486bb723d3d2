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

It lives in book/_ext/, not in the installed package: only the book needs it.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

# MathJax 3's combined TeX-to-CHTML component, and the folders it loads from at run time
MATHJAX_PACKAGE = "sphinx-mathjax-offline"
MATHJAX_ENTRY = "tex-chtml.js"
MATHJAX_PARTS = (MATHJAX_ENTRY, "input", "output/chtml", "ui", "a11y", "adaptors")


def setup(app):
    """Sphinx entry point."""
    app.connect("config-inited", _local_mathjax_path)
    app.connect("build-finished", _copy_mathjax)
    app.connect("env-before-read-docs", _read_in_toc_order)
    # before sphinx-book-theme builds its header buttons (priority 501), so that its download menu lists the .ipynb
    app.connect("html-page-context", _offer_notebook_download, priority=500)
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
