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

It lives in book/_ext/, not in the installed package: only the book needs it.
"""

from __future__ import annotations


def setup(app):
    """Sphinx entry point."""
    app.connect("env-before-read-docs", _read_in_toc_order)
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
        for child in (doc.child_files() if doc is not None else []):
            walk(child)

    walk(site_map.root.docname)
    return order


def _read_in_toc_order(app, env, docnames: list[str]):
    site_map = getattr(env, "external_site_map", None) or getattr(app.config, "external_site_map", None)
    if site_map is None:  # not a Jupyter Book / external-toc project: keep Sphinx's order
        return
    rank = {name: i for i, name in enumerate(toc_order(site_map))}
    docnames.sort(key=lambda name: (rank.get(name, len(rank)), name))
