"""Real-browser checks of the built tutorial site (_build/html), in Chromium through Playwright.

Build the site first (`make book`), then `make test PYTEST_ARGS="-m book"`.

Environment:
  MEDREASON_SITE_DIR      the built HTML folder (default _build/html); the table of contents is read from
                          the book source two levels up (<site>/../../_toc.yml), as jupyter-book lays it out.
  MEDREASON_CHROMIUM      the Chromium executable; without it, Playwright's own browser, then `chromium`,
                          `chromium-browser` or `google-chrome` on PATH (tests/browser.py resolves it).
  MEDREASON_REQUIRE_SITE  set to 1 (CI does) to fail instead of skip when the site, Playwright or Chromium
                          is missing.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
import yaml
from browser import ChromiumError, find_chromium, how_to_install
from prerequisites import PREFIX, message, missing

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[1]
SITE_DIR = Path(os.environ.get("MEDREASON_SITE_DIR") or REPO / "_build" / "html").resolve()
TOC_FILE = SITE_DIR.parent.parent / "_toc.yml"
REQUIRED = os.environ.get("MEDREASON_REQUIRE_SITE", "") not in ("", "0")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root (CI containers, this sandbox)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
# Uncaught JavaScript errors that the stock Jupyter Book 1.x toolchain produces on every page, not the book's
# fault: sphinx-thebe 0.3.x adds its inline `const THEBE_JS_URL = ...` script twice to each page.
KNOWN_JS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


def _unavailable(reason: str, fix: str = "make book") -> None:
    """Skip the whole module, or fail it where the site is required (CI). The skip's reason carries the
    prerequisites prefix, so tests/conftest.py lists it in the block at the end of pytest's summary."""
    if REQUIRED:
        pytest.fail(f"MEDREASON_REQUIRE_SITE is set but {reason}", pytrace=False)
    pytest.skip(PREFIX + message(reason, fix), allow_module_level=True)


def _missing_tool(what: str, install: str) -> None:
    """A missing browser tool: failed where the site is required, else a loud skip (prerequisites.py)."""
    if REQUIRED:
        pytest.fail(f"MEDREASON_REQUIRE_SITE is set but {what} is not installed ({install})", pytrace=False)
    missing(what, install, module=True)


if not (SITE_DIR / "index.html").is_file():
    _unavailable(f"the built book ({SITE_DIR / 'index.html'})")
if not TOC_FILE.is_file():
    _unavailable(f"the table of contents at <site>/../../_toc.yml ({TOC_FILE})", "jupyter-book build book/")
try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    _missing_tool("the playwright Python package", "make setup, or .venv/bin/pip install -e '.[test]'")
try:
    CHROMIUM = find_chromium()
except ChromiumError as exc:
    _unavailable(str(exc), "a Chromium at MEDREASON_CHROMIUM, or unset it")
if CHROMIUM is None:
    _missing_tool("Chromium", how_to_install().removeprefix("no Chromium: "))


# --------------------------------------------------------------------------------------------- table of contents
def _toc_entries(entries: list | None) -> list[str]:
    """Depth-first file list of a jb-book `chapters:`/`sections:` list: Sphinx's reading order."""
    files: list[str] = []
    for entry in entries or []:
        if "file" in entry:
            files.append(str(entry["file"]))
        # `url:` entries are external links and `glob:` patterns cannot be resolved here: neither is a page.
        files += _toc_entries(entry.get("sections"))
    return files


def _page_name(file: str) -> str:
    """A _toc.yml `file:` (no suffix, or .md/.ipynb/.rst) -> the HTML page path relative to the site."""
    path = Path(file)
    if path.suffix in {".md", ".ipynb", ".rst"}:
        path = path.with_suffix("")
    return path.as_posix() + ".html"


def load_toc(toc_file: Path = TOC_FILE) -> tuple[str, list[str]]:
    """(root page, chapter pages in order) of a Jupyter Book 1.x `format: jb-book` table of contents."""
    toc = yaml.safe_load(toc_file.read_text(encoding="utf-8"))
    assert toc.get("format") == "jb-book", f"{toc_file}: expected `format: jb-book`, got {toc.get('format')!r}"
    chapters = _toc_entries(toc.get("chapters"))
    for part in toc.get("parts") or []:
        chapters += _toc_entries(part.get("chapters"))
    return _page_name(toc["root"]), [_page_name(f) for f in chapters]


ROOT_PAGE, CHAPTER_PAGES = load_toc()
ALL_PAGES = [ROOT_PAGE, *CHAPTER_PAGES]


def is_notebook(page: str) -> bool:
    """Whether the page's source (book/<page>.md beside the table of contents) is a notebook: a kernelspec in
    its front matter. The datasheet and the reference page are plain pages, with no executed cells."""
    source = TOC_FILE.parent / "book" / Path(page).with_suffix(".md")
    return source.is_file() and "kernelspec:" in source.read_text(encoding="utf-8").split("\n---\n", 1)[0]


NOTEBOOK_PAGES = [name for name in CHAPTER_PAGES if is_notebook(name)]


# ------------------------------------------------------------------------------------------------------ fixtures
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture(scope="module")
def site_url():
    """Serve SITE_DIR on 127.0.0.1 (a free port) from a background thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(SITE_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM.launch_path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    pg.js_errors = []  # uncaught exceptions thrown by the page's own scripts
    pg.on("pageerror", lambda exc: pg.js_errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()


def _report(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"{page}: {problem}" for page, items in problems.items() for problem in items)


def _path_of(url: str) -> str:
    return urlparse(url).path.lstrip("/")


# --------------------------------------------------------------------------------------------------- page checks
# Runs in the page: what each check needs, in one round trip.
_INSPECT_JS = """
() => {
  const article = document.querySelector('article') || document.body;
  const cells = [...article.querySelectorAll('div.cell')];
  const outputs = [...article.querySelectorAll('div.cell div.cell_output')];
  const nonEmpty = outputs.filter(o =>
      o.innerText.trim().length > 0 || o.querySelector('img, svg, canvas, table, iframe, video') !== null);
  const stderrTexts = [...article.querySelectorAll('.output.stderr')].map(e => e.innerText);
  return {
    title: document.title,
    cells: cells.length,
    codeCells: article.querySelectorAll('div.cell div.cell_input div.highlight').length,
    outputs: outputs.length,
    nonEmptyOutputs: nonEmpty.length,
    tracebacks: article.querySelectorAll('.output.traceback').length,
    stderrTexts,
    hasTracebackText: article.innerText.includes('Traceback (most recent call last)'),
    copyButtons: article.querySelectorAll('div.cell_input button.copybtn').length,
  };
}
"""

_IMAGE_JS = """
(img) => {
  const r = img.getBoundingClientRect();
  return {src: img.getAttribute('src'), complete: img.complete, naturalWidth: img.naturalWidth,
          width: r.width, height: r.height};
}
"""


def check_page(page, site_url: str, name: str, *, needs_outputs: bool) -> list[str]:
    """Everything that can be wrong with one page of the site, as a list of problems (empty: fine)."""
    problems: list[str] = []
    url = urljoin(site_url, name)
    try:
        response = page.goto(url, wait_until="load")
    except PlaywrightError as exc:
        return [f"does not load: {exc}"]
    if response is None or response.status != 200:
        return [f"HTTP {response.status if response else 'no response'} for {url}"]

    # sphinx-copybutton adds its buttons from JavaScript once the DOM is ready: give it the chance.
    info = page.evaluate(_INSPECT_JS)
    if info["codeCells"] and info["copyButtons"] < info["codeCells"]:
        try:
            page.wait_for_function(
                "n => document.querySelectorAll('article div.cell_input button.copybtn').length >= n",
                arg=info["codeCells"],
                timeout=5_000,
            )
        except PlaywrightTimeout:
            pass
        info = page.evaluate(_INSPECT_JS)

    # executed outputs
    if needs_outputs or info["cells"]:
        if info["cells"] == 0:
            problems.append("no code cells (div.cell): expected an executed chapter")
        elif info["nonEmptyOutputs"] == 0:
            problems.append(
                f"no executed output: {info['cells']} code cell(s) but {info['outputs']} output block(s), "
                "none with content (was the book built without executing the notebooks?)"
            )
    # errors
    if info["tracebacks"]:
        problems.append(f"{info['tracebacks']} error output(s) (.output.traceback)")
    for text in info["stderrTexts"]:
        if "Traceback" in text or "Error" in text:
            first = next((line for line in text.splitlines() if "Error" in line or "Traceback" in line), text)
            problems.append(f"stderr output with an error: {first.strip()[:200]!r}")
    if info["hasTracebackText"]:
        problems.append("page text contains 'Traceback (most recent call last)'")
    # copy buttons
    if info["codeCells"] and info["copyButtons"] < info["codeCells"]:
        problems.append(f"{info['codeCells']} code cell(s) but {info['copyButtons']} copy button(s) (button.copybtn)")
    # images
    images = page.locator("article img")
    for i in range(images.count()):
        img = images.nth(i)
        try:
            img.scroll_into_view_if_needed(timeout=5_000)
        except PlaywrightError:
            pass  # not visible: reported below as a zero-size box
        try:
            img.evaluate("img => img.complete || new Promise(r => { img.onload = img.onerror = r; })")
        except PlaywrightError:
            pass
        box = img.evaluate(_IMAGE_JS)
        if not box["naturalWidth"]:
            problems.append(f"image {box['src']!r} did not load (naturalWidth 0)")
        elif not box["width"] > 0:
            problems.append(f"image {box['src']!r} is not rendered (bounding box width {box['width']})")
    # the page's own JavaScript
    for error in page.js_errors:
        if any(known in error for known in KNOWN_JS_ERRORS):
            continue
        problems.append(f"uncaught JavaScript error: {error[:200]}")
    return problems


def test_toc_lists_chapters():
    assert CHAPTER_PAGES, f"{TOC_FILE} lists no chapters"
    missing = [name for name in ALL_PAGES if not (SITE_DIR / name).is_file()]
    assert not missing, f"pages in {TOC_FILE.name} that were not built into {SITE_DIR}: {missing}"


@pytest.mark.parametrize("name", ALL_PAGES)
def test_page(page, site_url, name):
    problems = check_page(page, site_url, name, needs_outputs=name in NOTEBOOK_PAGES)
    assert not problems, f"problems on {name}:\n" + _report({name: problems})


def test_index_redirects_to_root(page, site_url):
    page.goto(site_url, wait_until="load")
    page.wait_for_url(f"**/{ROOT_PAGE}", timeout=10_000)
    assert _path_of(page.url) == ROOT_PAGE


def _follow(page, selector: str, expected: list[str]) -> dict[str, list[str]]:
    """Click `selector` from the current page once per expected page; problems keyed by the page clicked on."""
    problems: dict[str, list[str]] = {}
    for target in expected:
        here = _path_of(page.url)
        link = page.locator(selector)
        if link.count() != 1:
            problems.setdefault(here, []).append(f"{link.count()} '{selector}' links; expected one, to {target}")
            return problems
        with page.expect_navigation(wait_until="load"):
            link.click()
        if _path_of(page.url) != target:
            problems.setdefault(here, []).append(
                f"'{selector}' went to {_path_of(page.url)}, expected {target} (order of _toc.yml)"
            )
            return problems
    last = _path_of(page.url)
    if page.locator(selector).count():
        href = page.locator(selector).first.get_attribute("href")
        problems.setdefault(last, []).append(f"has a '{selector}' link (to {href}) past the end of the book")
    return problems


def test_next_and_previous_navigation(page, site_url):
    # sphinx-book-theme: a.right-next is the "next" link, a.left-prev the "previous" one.
    page.goto(urljoin(site_url, ROOT_PAGE), wait_until="load")
    assert page.locator("a.left-prev").count() == 0, f"{ROOT_PAGE}: the first page has a 'previous' link"
    problems = _follow(page, "a.right-next", CHAPTER_PAGES)
    assert not problems, "next-page navigation:\n" + _report(problems)
    problems = _follow(page, "a.left-prev", list(reversed(ALL_PAGES[:-1])))
    assert not problems, "previous-page navigation:\n" + _report(problems)


def test_search_finds_lora(page, site_url):
    page.goto(urljoin(site_url, "search.html?q=LoRA"), wait_until="load")
    # Sphinx searches in JavaScript after loading searchindex.js: wait for the result list to fill.
    try:
        page.wait_for_selector("#search-results li", timeout=TIMEOUT_MS)
        found = True
    except PlaywrightTimeout:
        found = False
    if not found:
        summary = page.locator("#search-results").inner_text() if page.locator("#search-results").count() else ""
        pytest.fail(f"search.html?q=LoRA: no results within {TIMEOUT_MS / 1000:.0f}s ({summary.strip()!r})")
    results = page.locator("#search-results li")
    links = [results.nth(i).locator("a").first.get_attribute("href") or "" for i in range(results.count())]
    assert links, "search.html?q=LoRA: no results"
    assert any(urlparse(h).path.split("/")[-1] in ALL_PAGES for h in links), (
        f"search.html?q=LoRA: no result links to a page of the book: {links}"
    )


# ------------------------------------------------------------------------------------------- offline and width
def _pages_with_math() -> list[str]:
    """Pages whose HTML holds a formula (Sphinx marks them `math notranslate nohighlight`)."""
    return [name for name in ALL_PAGES if "math notranslate" in (SITE_DIR / name).read_text(encoding="utf-8")]


def test_formulas_render_with_the_network_blocked(browser, site_url):
    """Every request that leaves 127.0.0.1 is refused, as on a train or a machine without a network: the
    formulas still turn into MathJax's output (mjx-container elements), from the MathJax the site serves."""
    pages = _pages_with_math()
    assert pages, "no page of the book has a formula: the check would prove nothing"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    refused: list[str] = []

    def only_local(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    problems: dict[str, list[str]] = {}
    try:
        page = context.new_page()
        for name in pages:
            page.goto(urljoin(site_url, name), wait_until="load")
            try:
                page.wait_for_selector("mjx-container", state="attached", timeout=TIMEOUT_MS)
            except PlaywrightTimeout:
                problems.setdefault(name, []).append("no formula was rendered (no mjx-container) offline")
                continue
            # MathJax typesets the whole page: every formula Sphinx wrote has its rendering
            left = page.evaluate(
                """() => [...document.querySelectorAll('article .math')].filter(
                       m => !m.querySelector('mjx-container')).length"""
            )
            if left:
                problems.setdefault(name, []).append(f"{left} formula(s) left as raw TeX")
    finally:
        context.close()
    assert not problems, "formulas offline:\n" + _report(problems) + f"\nrefused requests: {refused[:10]}"


_WIDTH_JS = """
() => [...document.querySelectorAll('article div.cell div.cell_input pre')]
  .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
  .map(pre => ({width: pre.scrollWidth, column: pre.clientWidth,
                line: pre.innerText.split('\\n').reduce((a, l) => l.length > a.length ? l : a, '')}))
"""


@pytest.mark.parametrize("name", NOTEBOOK_PAGES)
def test_no_code_cell_is_wider_than_its_column(page, site_url, name):
    """A reader of the page (1280 px wide window) reads every code cell without scrolling sideways."""
    page.goto(urljoin(site_url, name), wait_until="load")
    wide = page.evaluate(_WIDTH_JS)
    assert not wide, f"{name}: {len(wide)} code cell(s) scroll sideways, e.g. " + "; ".join(
        f"{w['width']} px in a {w['column']} px column: {w['line'][:100]!r}" for w in wide[:3]
    )
