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

It lives in book/_ext/, not in the installed package: only the book needs it.
"""

from __future__ import annotations

from pathlib import Path


def setup(app):
    """Sphinx entry point."""
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
