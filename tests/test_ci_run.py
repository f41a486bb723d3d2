""".ci/run checks for the tools it needs before it installs anything: without make or a Chromium, and
without root and apt-get to install them, it stops with one line naming them (run on a PATH of fakes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from prerequisites import missing

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
if BASH is None:
    missing("bash", "sudo apt-get install bash", module=True)


def _bin(tmp_path: Path, *, uid: int, tools: tuple[str, ...]) -> Path:
    """A PATH folder with the basics .ci/run uses, a fake `id`, and fake versions of `tools`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("dirname", "date", "python3"):
        real = shutil.which(name)
        assert real, f"{name} is not installed"
        (folder / name).symlink_to(real)
    for name, body in [("id", f"echo {uid}"), *((t, "exit 0") for t in tools)]:
        (folder / name).write_text(f"#!{BASH}\n{body}\n", encoding="utf-8")
        (folder / name).chmod(0o755)
    return folder


def _run(folder: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDREASON_CHROMIUM"}
    env["PATH"] = str(folder)
    return subprocess.run(
        [BASH, str(REPO / ".ci" / "run")], cwd="/", capture_output=True, text=True, timeout=60, env=env
    )


def test_missing_tools_without_root_is_one_clear_line(tmp_path):
    proc = _run(_bin(tmp_path, uid=1000, tools=()))
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        ".ci/run: missing make chromium, and installing them needs root and apt-get: "
        "install them (Debian: apt-get install make chromium) and run again"
    ], proc.stderr


def test_only_what_is_missing_is_named(tmp_path):
    proc = _run(_bin(tmp_path, uid=1000, tools=("google-chrome",)))
    assert proc.returncode == 1, proc
    assert proc.stderr.strip() == (
        ".ci/run: missing make, and installing them needs root and apt-get: "
        "install them (Debian: apt-get install make) and run again"
    ), proc.stderr
