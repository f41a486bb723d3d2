"""Chapters as notebooks: the first cell that finds the checkout, the book's local Sphinx extension (reading
order, .ipynb downloads), a real Jupyter server opening a chapter through jupytext, and a downloaded
notebook executed from a folder of a clone.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_notebooks.py -q
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prerequisites import PREFIX, message

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
EXT = BOOK / "_ext"
PAGES = sorted(BOOK.glob("*.md"))
# the chapters are the pages that are notebooks (a kernelspec in the front matter); the datasheet and the
# reference page are plain pages
CHAPTERS = [p for p in PAGES if "kernelspec:" in p.read_text(encoding="utf-8").split("\n---\n", 1)[0]]
SITE = ROOT / "_build" / "html"
if str(EXT) not in sys.path:
    sys.path.insert(0, str(EXT))


def require_site():
    """The built site, or a skip that names the command that builds it (listed in pytest's summary block);
    under MEDREASON_REQUIRE_SITE=1 (CI) a failure instead."""
    if (SITE / "index.html").exists():
        return
    what = f"the built book ({SITE / 'index.html'})"
    if os.environ.get("MEDREASON_REQUIRE_SITE", "") not in ("", "0"):
        pytest.fail(f"MEDREASON_REQUIRE_SITE is set but {what} does not exist: run `make book` first", pytrace=False)
    pytest.skip(PREFIX + message(what, "make book"))


def _first_code_cell(chapter: Path) -> str:
    match = re.search(r"^```\{code-cell\}[^\n]*\n(.*?)^```$", chapter.read_text(encoding="utf-8"), re.S | re.M)
    assert match, f"{chapter.name}: no code cell"
    return match.group(1)


def _clone_copy(dest: Path) -> Path:
    """The parts of a checkout that the chapters look at: pyproject.toml, configs/, the measured results they read
    (results/benchmarks/) and the book's sources (the package itself is the installed one)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(ROOT / "configs", dest / "configs")
    shutil.copytree(ROOT / "results" / "benchmarks", dest / "results" / "benchmarks")
    shutil.copytree(BOOK, dest / "book", ignore=shutil.ignore_patterns("__pycache__", "_build", "_notebooks"))
    return dest


# ------------------------------------------------------------------------------------------ the first cell


SETUP_LINE = "from medreason.book import setup; chapter = setup()"


def test_every_chapter_starts_with_the_same_setup_line():
    """One first cell for every chapter: the one-line set-up from the installed package."""
    assert len(CHAPTERS) >= 7, [c.name for c in CHAPTERS]
    for chapter in CHAPTERS:
        cell = _first_code_cell(chapter).strip()
        assert cell.split("  #")[0] == SETUP_LINE, f"{chapter.name}: first cell is not the set-up line: {cell!r}"
        assert "\n" not in cell, f"{chapter.name}: the set-up cell is one line"


@pytest.mark.parametrize("where", ["book", "book/_notebooks", "downloads/deeper"])
def test_first_cell_finds_the_checkout_from_any_folder(tmp_path, where):
    """Run the chapters' first cell in a fresh interpreter from a folder of a clone: it moves to the clone's
    root and sends medreason's log lines to stdout, progress lines included, as in the book build."""
    clone = _clone_copy(tmp_path / "clone")
    folder = clone / where
    folder.mkdir(parents=True, exist_ok=True)
    code = _first_code_cell(BOOK / "data_prep.md") + (
        "import logging, os\n"
        "from medreason import progress\n"
        "print('cwd', os.getcwd())\n"
        "print('root', chapter.root)\n"
        "print('progress', progress.mode())\n"
        "logging.getLogger('medreason.data').info('hello')\n"
        "logging.getLogger('transformers').info('not shown')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"cwd {clone.resolve()}" in lines, proc.stdout
    assert f"root {clone.resolve()}" in lines, proc.stdout
    assert "progress lines" in lines, proc.stdout  # training's per-step lines reach the page
    assert "medreason: hello" in lines, proc.stdout
    assert "not shown" not in proc.stdout and proc.stderr == "", (proc.stdout, proc.stderr)


def test_outside_a_clone_the_installed_checkout_is_used(tmp_path):
    """A notebook saved outside any clone runs against the checkout this (editable) medreason comes from."""
    code = _first_code_cell(BOOK / "data_prep.md") + "print('root', chapter.root)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"root {ROOT}" in proc.stdout.splitlines(), proc.stdout


def test_no_checkout_at_all_is_one_clear_error(tmp_path, monkeypatch):
    from medreason import book

    monkeypatch.setattr(book, "__file__", str(tmp_path / "site-packages" / "medreason" / "book.py"))
    with pytest.raises(FileNotFoundError, match="no medreason checkout .* open the notebook inside a clone"):
        book.repo_root(tmp_path)


def test_the_recipe_follows_cuda(tmp_path, monkeypatch):
    """The GPU branch: where CUDA is present the chapters train with the GPU recipe, else with the CPU one."""
    import torch

    from medreason import book

    clone = _clone_copy(tmp_path / "clone")
    cwd = os.getcwd()
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        on_gpu = book.setup(clone)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        on_cpu = book.setup(clone)
        assert book.setup(clone, gpu=True).recipe == book.GPU_RECIPE
    finally:
        os.chdir(cwd)
    assert (on_gpu.recipe, on_gpu.gpu) == (book.GPU_RECIPE, True)
    assert (on_cpu.recipe, on_cpu.gpu) == (book.CPU_RECIPE, False)
    for recipe in (book.GPU_RECIPE, book.CPU_RECIPE):
        assert (ROOT / recipe).is_file(), recipe
    assert "smollm2-135m-gpu" in book.GPU_RECIPE and "cpu" in book.CPU_RECIPE


def test_chapters_train_with_the_recipe_setup_picked():
    """The chapters that train or load the SFT adapter read `chapter.recipe`, so the GPU branch reaches them."""
    for name in ("training.md", "inference.md"):
        text = (BOOK / name).read_text(encoding="utf-8")
        assert "chapter.recipe" in text, f"{name} does not use chapter.recipe"


# ------------------------------------------------------------------------------------------ Sphinx extension


def test_config_loads_the_local_extension():
    """The root _config.yml names book/_ext/medreason_sphinx as a local extension, and Jupyter Book resolves it."""
    from jupyter_book.config import get_final_config

    config, _ = get_final_config(
        user_yaml=ROOT / "_config.yml", sourcedir=BOOK, cli_config={"latex_individualpages": False}
    )
    assert "medreason_sphinx" in config["extensions"]
    assert str(EXT) in sys.path
    import medreason_sphinx

    assert Path(medreason_sphinx.__file__).resolve() == (EXT / "medreason_sphinx.py").resolve()


def test_toc_order_reads_training_before_its_users():
    import medreason_sphinx
    from sphinx_external_toc.parsing import parse_toc_yaml

    order = medreason_sphinx.toc_order(parse_toc_yaml(BOOK / "_toc.yml"))
    assert order[0] == "intro"
    assert order.index("training") < order.index("inference") < order.index("evaluation"), order
    assert sorted(order) == sorted(p.stem for p in PAGES), order


def test_config_names_no_placeholder_repository():
    """No launch buttons, no repository URL: a placeholder would send readers to someone else's project."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert "launch_buttons" not in config, config.get("launch_buttons")
    assert not (config.get("repository") or {}).get("url"), config.get("repository")


@pytest.mark.infra
def test_tiny_book_offers_notebook_downloads(tmp_path):
    """A two-page book built with the extension (execution off): the notebook page gets _sources/<page>.ipynb and
    the theme's ".ipynb" download entry, the plain page gets neither; pages are read in toc order."""
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text(
        "title: tiny\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: 'off'\n"
        f"sphinx:\n  local_extensions:\n    medreason_sphinx: {EXT}\n",
        encoding="utf-8",
    )
    (tmp_path / "book" / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: zeta\n  - file: alpha\n", encoding="utf-8"
    )
    front = (BOOK / "intro.md").read_text(encoding="utf-8").split("\n---\n", 1)[0] + "\n---\n"
    (tmp_path / "book" / "intro.md").write_text(front + "\n# Intro\n\n```{code-cell} ipython3\nprint(1)\n```\n")
    (tmp_path / "book" / "zeta.md").write_text(front + "\n# Zeta\n\n```{code-cell} ipython3\nprint(2)\n```\n")
    (tmp_path / "book" / "alpha.md").write_text("# Alpha\n\nA page without code.\n")
    jb = Path(sys.executable).parent / "jupyter-book"
    env = dict(os.environ, MEDREASON_REPOSITORY="owner/name", MEDREASON_REF="0123abc")
    proc = subprocess.run(
        [str(jb), "build", "book/", "--warningiserror", "-v"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)  # Sphinx colours its log
    read = re.findall(r"^reading sources\.\.\. \[\s*\d+%\] (\w+)$", log, re.M)
    assert read == ["intro", "zeta", "alpha"], read
    html = tmp_path / "_build" / "html"
    import nbformat

    notebook = nbformat.read(html / "_sources" / "zeta.ipynb", as_version=4)
    assert [c.source for c in notebook.cells if c.cell_type == "code"] == ["print(2)"]
    assert 'href="_sources/zeta.ipynb"' in (html / "zeta.html").read_text(encoding="utf-8")
    assert not (html / "_sources" / "alpha.ipynb").exists()
    # the Colab link of the notebook page points to the notebook the colab job writes for it
    links = COLAB_LINK.findall((html / "zeta.html").read_text(encoding="utf-8"))
    import medreason_sphinx

    assert links == [("owner/name", medreason_sphinx.COLAB_BRANCH, "zeta.ipynb")], links
    published = medreason_sphinx.write_colab_notebooks(tmp_path / "book", tmp_path / "colab", env=env)
    assert [p.name for p in published] == ["intro.ipynb", "zeta.ipynb"]
    assert not COLAB_LINK.findall((html / "alpha.html").read_text(encoding="utf-8"))
    assert "download-notebook-button" not in (html / "alpha.html").read_text(encoding="utf-8")


@pytest.mark.book
def test_built_site_offers_every_chapter_notebook():
    """After `make book`: every chapter page links its .ipynb, and the .ipynb holds the chapter's code cells."""
    require_site()
    import jupytext
    import nbformat

    for chapter in CHAPTERS:
        page = (SITE / f"{chapter.stem}.html").read_text(encoding="utf-8")
        assert f'href="_sources/{chapter.stem}.ipynb"' in page, f"{chapter.stem}.html offers no .ipynb download"
        built = nbformat.read(SITE / "_sources" / f"{chapter.stem}.ipynb", as_version=4)
        source = jupytext.read(chapter)
        assert [c.source for c in built.cells] == [c.source for c in source.cells], chapter.name
        # built by the workflow (MEDREASON_REPOSITORY set): every chapter's Colab link opens its published name
        for repo, branch, name in COLAB_LINK.findall(page):
            assert (branch, name) == ("colab", f"{chapter.stem}.ipynb"), (chapter.name, repo, branch, name)


# ------------------------------------------------------------------------------------------ a downloaded notebook


@pytest.mark.infra
def test_downloaded_notebook_runs_from_a_folder_of_a_clone(tmp_path):
    """The intro chapter's .ipynb, as the site offers it (or converted the same way when no site is built),
    saved into a folder of a clone copy and executed there with nbclient, as a reader's Jupyter would."""
    import medreason_sphinx
    import nbformat
    from nbclient import NotebookClient

    clone = _clone_copy(tmp_path / "clone")
    folder = clone / "downloads"
    built = SITE / "_sources" / "intro.ipynb"
    if built.exists():
        folder.mkdir()
        shutil.copy(built, folder / "intro.ipynb")
    else:
        medreason_sphinx.write_chapter_notebook(BOOK / "intro.md", folder / "intro.ipynb")
    notebook = nbformat.read(folder / "intro.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(folder)}}).execute()
    printed = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    # the first cell moved to the clone copy's root, not to the checkout the test runs from
    assert f"the repository root, {clone.name}/" in printed, printed[:2000]
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error" or out.get("name") == "stderr"
    ]
    assert not errors, errors


# ------------------------------------------------------------------------------------------ a real Jupyter server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """`jupyter lab --no-browser` on 127.0.0.1, a free port and a random token, with its own runtime and
    user config folders; the REST calls carry the token."""

    def __init__(self, root: Path, scratch: Path, *extra: str):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            JUPYTER_RUNTIME_DIR=str(scratch / "runtime"),
            JUPYTER_CONFIG_DIR=str(scratch / "config"),
            JUPYTER_DATA_DIR=str(scratch / "data"),
        )
        args = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            *extra,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI runners often run as root
            args.append("--allow-root")
        self.log = open(scratch / "server.log", "w")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {self.proc.returncode}: {self.log_text()[-3000:]}")
            try:
                self.request("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"jupyter lab did not answer in 120 s: {self.log_text()[-3000:]}")
                time.sleep(0.5)

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")

    def request(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def execute(self, kernel_id: str, code: str, timeout: float = 120) -> tuple[dict, str, str]:
        """Run `code` through the kernel's websocket; returns (execute_reply content, stdout, stderr)."""
        import websocket

        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}", timeout=timeout
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "username": "test",
                            "session": uuid.uuid4().hex,
                            "msg_type": "execute_request",
                            "version": "5.3",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "channel": "shell",
                        "buffers": [],
                        "content": {
                            "code": code,
                            "silent": False,
                            "store_history": True,
                            "user_expressions": {},
                            "allow_stdin": False,
                            "stop_on_error": True,
                        },
                    }
                )
            )
            streams, reply, idle = {"stdout": "", "stderr": ""}, None, False
            deadline = time.monotonic() + timeout
            while not (reply and idle):
                assert time.monotonic() < deadline, f"no reply in {timeout} s; so far {streams}"
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "stream":
                    streams[msg["content"]["name"]] += msg["content"]["text"]
                elif kind == "error":
                    streams["stderr"] += "\n".join(msg["content"]["traceback"])
                elif kind == "execute_reply":
                    reply = msg["content"]
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            return reply, streams["stdout"], streams["stderr"]
        finally:
            ws.close()

    def stop(self):
        try:
            self.request("POST", "/api/shutdown")
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 -- the server is going away either way: make sure it is gone
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        finally:
            self.log.close()


@pytest.fixture
def jupyter_server(tmp_path):
    server = _Server(ROOT, tmp_path)
    yield server
    server.stop()
    assert server.proc.poll() is not None, "jupyter lab is still running"


@pytest.mark.infra
def test_jupyter_server_opens_a_chapter_and_runs_its_first_cell(jupyter_server):
    """JupyterLab's server, with jupytext's contents manager, opens book/training.md as a notebook whose cells are
    the chapter's; a kernel started for it, as JupyterLab starts one (a session in book/), runs the chapter's
    first cell: it moves to the repository root and logs to stdout."""
    import jupytext

    server = jupyter_server
    model = server.request("GET", "/api/contents/book/training.md?type=notebook&content=1")
    assert model["type"] == "notebook", model["type"]
    expected = jupytext.read(BOOK / "training.md")
    cells = model["content"]["cells"]
    assert [(c["cell_type"], c["source"]) for c in cells] == [(c.cell_type, c.source) for c in expected.cells]
    kernel_name = model["content"]["metadata"]["kernelspec"]["name"]

    session = server.request(
        "POST",
        "/api/sessions",
        {"path": "book/training.md", "name": "training.md", "type": "notebook", "kernel": {"name": kernel_name}},
    )
    try:
        first = next(c["source"] for c in cells if c["cell_type"] == "code")
        code = (
            first + "\nimport logging, os\nprint('cwd', os.getcwd())\nlogging.getLogger('medreason.x').info('hello')\n"
        )
        reply, stdout, stderr = server.execute(session["kernel"]["id"], code)
        assert reply["status"] == "ok", (reply, stderr)
        assert f"cwd {ROOT}" in stdout.splitlines(), stdout
        assert "medreason: hello" in stdout.splitlines(), stdout
        assert stderr == "", stderr
    finally:
        server.request("DELETE", f"/api/sessions/{session['id']}")


# ------------------------------------------------------------------------------------------ JupyterLab's UI

OVERRIDES = EXT / "jupyterlab-overrides.json"


def test_make_lab_installs_the_viewer_overrides():
    """`make lab` (and `pixi run lab`) copy the overrides into JupyterLab's app settings folder, where
    JupyterLab reads overrides.json; the UI test below hands the same file to its server."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "cp book/_ext/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json" in makefile
    viewers = json.loads(OVERRIDES.read_text(encoding="utf-8"))["@jupyterlab/docmanager-extension:plugin"]
    assert viewers["defaultViewers"]["markdown"] == "Jupytext Notebook", viewers


@pytest.mark.infra
def test_jupyterlab_opens_a_chapter_as_a_notebook_and_runs_its_first_cell(tmp_path):
    """What a reader does after `make lab`, in Chromium through JupyterLab's own UI: double-click `book/` and
    then `lora_theory.md` in the file browser. The chapter opens as a notebook (jupytext's viewer, not the text
    editor), and its first cell, run with Shift+Enter, finishes without an error.

    This caught jupytext 1.19, whose lab extension is built for JupyterLab 4.6 and does not load in 4.5: the
    double click then opened the text editor, while the server's REST API still returned a notebook."""
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import find_chromium, how_to_install
    from prerequisites import missing

    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing("the playwright Python package", "make setup")
    chromium = find_chromium()
    if chromium is None:
        missing("Chromium", how_to_install().removeprefix("no Chromium: "))
    settings = tmp_path / "app-settings"
    settings.mkdir()
    shutil.copy(OVERRIDES, settings / "overrides.json")  # where `make lab` puts it, for this server only
    server = _Server(ROOT, tmp_path, f"--LabApp.app_settings_dir={settings}")
    console: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium.launch_path, args=["--headless", "--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.goto(f"{server.base}/lab?token={server.token}")

                def item(name):
                    text = page.locator(".jp-DirListing-itemText", has_text=re.compile(f"^{re.escape(name)}$"))
                    return page.locator(".jp-DirListing-item", has=text)

                item("book").dblclick()
                item("lora_theory.md").dblclick()
                notebook = page.locator(".jp-NotebookPanel")
                notebook.wait_for()
                assert page.locator(".jp-FileEditor").count() == 0, "the chapter also opened in the text editor"
                first = notebook.locator(".jp-CodeCell").first
                # cells render lazily: wait for the editor to show the set-up line
                expect(first.locator(".jp-InputArea-editor")).to_contain_text("from medreason.book import setup")
                # the chapter's kernel has started (the status bar names it and says Idle), then run the cell
                expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=120_000)
                first.locator(".jp-InputArea-editor").click()
                expect(first).to_have_class(re.compile("jp-mod-active"))
                page.keyboard.press("Shift+Enter")
                # "[ ]:" before, "[*]:" while it runs, "[1]:" once done
                expect(first.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=120_000)
                errors = first.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
                assert errors.count() == 0, errors.all_inner_texts()
                assert first.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count() == 0
            finally:
                browser.close()
    except (AssertionError, PlaywrightError) as exc:
        raise AssertionError(
            f"JupyterLab did not open and run the chapter as a notebook: {exc}\nbrowser console:\n"
            + "\n".join(line for line in console if "rror" in line or "not found" in line)[-3000:]
        ) from None
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ one click to a GPU

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
COLAB_LINK = re.compile(r'href="https://colab\.research\.google\.com/github/([^/"]+/[^/"]+)/blob/([^/"]+)/([^"]+)"')


def test_colab_notebooks_clone_the_built_repository(tmp_path):
    """One Colab notebook per notebook chapter, in reading order: a first cell that clones owner/name at the
    commit, installs it and moves into it on Colab only, then the chapter's own cells, set-up line first."""
    import jupytext
    import medreason_sphinx
    import nbformat

    env = {"MEDREASON_REPOSITORY": "someone/medreason-fork", "MEDREASON_REF": "0123abc"}
    written = medreason_sphinx.write_colab_notebooks(BOOK, tmp_path, env=env)
    assert [p.stem for p in written] == [c.stem for c in medreason_sphinx.notebook_chapters(BOOK)]
    assert {p.stem for p in written} == {c.stem for c in CHAPTERS}
    for path in written:
        notebook = nbformat.read(path, as_version=4)
        first = notebook.cells[0].source
        assert 'REPOSITORY, COMMIT = "someone/medreason-fork", "0123abc"' in first
        assert 'url = f"https://github.com/{REPOSITORY}"' in first and '"google.colab" in sys.modules' in first
        chapter = jupytext.read(BOOK / f"{path.stem}.md")
        assert [c.source for c in notebook.cells[1:]] == [c.source for c in chapter.cells], path.name
        setup_cell = next(c.source for c in notebook.cells[1:] if c.cell_type == "code")
        assert setup_cell.startswith(SETUP_LINE), path.name
    # the first cell runs anywhere: off Colab it does nothing
    code = nbformat.read(written[0], as_version=4).cells[0].source
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not (tmp_path / "medreason-checkout").exists(), proc.stderr


def test_no_repository_no_colab_notebooks(tmp_path):
    import medreason_sphinx

    with pytest.raises(SystemExit, match="MEDREASON_REPOSITORY=owner/name"):
        medreason_sphinx.write_colab_notebooks(BOOK, tmp_path, env={})
    with pytest.raises(ValueError, match="not owner/name"):
        medreason_sphinx.repository({"MEDREASON_REPOSITORY": "just-a-name"})


def test_the_workflow_links_and_publishes_from_its_own_repository():
    """The build names the repository it runs in (github.repository, github.sha) to the links, the colab job
    writes the notebooks with the same names by the same code and pushes them to the branch the links open;
    no owner is written into the workflow."""
    import medreason_sphinx
    import yaml

    doc = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    wanted = {"MEDREASON_REPOSITORY": "${{ github.repository }}", "MEDREASON_REF": "${{ github.sha }}"}
    build = next(s for s in doc["jobs"]["build"]["steps"] if "make book" in s.get("run", ""))
    assert build.get("env", {}) == {**build.get("env", {}), **wanted}, build.get("env")
    colab = doc["jobs"]["colab"]
    assert colab["needs"] == "build" and colab["if"] == doc["jobs"]["deploy"]["if"], colab
    assert colab["permissions"] == {"contents": "write"}, colab["permissions"]
    write = next(s for s in colab["steps"] if "medreason_sphinx.py colab" in s.get("run", ""))
    assert write["env"] == wanted, write["env"]
    folder = write["run"].split("medreason_sphinx.py colab")[1].split()[0]
    push = next(s for s in colab["steps"] if "git push" in s.get("run", ""))
    assert push["run"].startswith(f"cd {folder}\n"), push["run"]
    assert f'${{GITHUB_REPOSITORY}}.git" {medreason_sphinx.COLAB_BRANCH}' in push["run"], push["run"]
    assert f"git init -q -b {medreason_sphinx.COLAB_BRANCH}" in push["run"]
    hard_coded = re.findall(r"github\.com/(?!\$\{)[\w.-]+/", WORKFLOW.read_text(encoding="utf-8"))
    assert not hard_coded, f"an owner written into the workflow: {hard_coded}"
    assert medreason_sphinx.colab_url("o/n", "training") == (
        f"https://colab.research.google.com/github/o/n/blob/{medreason_sphinx.COLAB_BRANCH}/training.ipynb"
    )
