"""A missing tool is a loud skip (named, with its install command, in a block at the end of pytest's summary),
and a failure under MEDREASON_REQUIRE_TOOLS=1 (.ci/run): run on a tiny test file whose tool does not exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TINY = """
from prerequisites import missing


def test_needs_a_tool():
    missing("frobnicator", "apt-get install frobnicator")


def test_plain():
    pass
"""


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_tiny.py").write_text(TINY, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k != "MEDREASON_REQUIRE_TOOLS"}
    environ.update(PYTHONPATH=str(TESTS), **env)
    # -p conftest: the summary hook of tests/conftest.py, loaded as a plugin from PYTHONPATH
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rs", "test_tiny.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def test_missing_tool_is_a_loud_skip(tmp_path):
    proc = _pytest(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout, proc.stdout
    block = proc.stdout[proc.stdout.index("missing prerequisites: these tests did not run") :]
    assert "frobnicator is not installed; install it with: apt-get install frobnicator" in block, block
    assert "test_tiny.py::test_needs_a_tool" in block and "MEDREASON_REQUIRE_TOOLS=1" in block, block


def test_missing_tool_fails_where_tools_are_required(tmp_path):
    proc = _pytest(tmp_path, MEDREASON_REQUIRE_TOOLS="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout
    assert "MEDREASON_REQUIRE_TOOLS is set but frobnicator is not installed" in proc.stdout, proc.stdout
    assert "missing prerequisites" not in proc.stdout, "a failure is not listed as a skip"


def test_ci_run_requires_tools():
    assert "MEDREASON_REQUIRE_TOOLS=1" in (TESTS.parent / ".ci" / "run").read_text(encoding="utf-8")
