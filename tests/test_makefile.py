"""The Makefile's set-up logic, on throwaway virtual environments (no network: only loopback and ensurepip).

`make VENV=<dir> venv` does the venv-and-pip part of `make setup` alone, so these tests repair a venv made
without pip (what `python3 -m venv` leaves on Debian/Ubuntu without python3-venv) in seconds, without
installing the project.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prerequisites import missing

REPO = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
if MAKE is None:
    missing(
        "make", "sudo apt-get install make (Fedora: sudo dnf install make; macOS: xcode-select --install)", module=True
    )


def _make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "GITHUB_"))}
    return subprocess.run(
        [MAKE, "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **(env or {})},
    )


def _shown(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _has_pip(venv: Path) -> bool:
    return subprocess.run([venv / "bin" / "python", "-m", "pip", "--version"], capture_output=True).returncode == 0


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def _fake_python(tmp_path: Path, version: str, *, imports: bool = True, venv_fails: bool = False) -> Path:
    """A `python3` that reports `version` to `-c` version queries, imports venv and ensurepip or not, and fails
    anything else when venv_fails."""
    return _script(
        tmp_path / "fake" / "python3",
        "\n".join(
            [
                'case "$1 $2" in',
                f'  "-c "*version_info*) echo {version};;',
                f'  "-c "*ensurepip*) exit {0 if imports else 1};;',
                f"  *) exit {1 if venv_fails else 0};;",
                "esac",
            ]
        ),
    )


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The one `medreason:` line on stderr (make adds its own `make: *** ... Error 1` after it)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medreason:")]
    assert proc.returncode != 0 and len(lines) == 1, _shown(proc)
    return lines[0]


@pytest.mark.parametrize("version", ["3.10.20", "3.9.18", "2.7.18"])
def test_old_python_is_named_with_its_version(tmp_path, version):
    python = _fake_python(tmp_path, version)
    proc = _make(f"PYTHON={python}", "prerequisites")
    assert _one_line(proc).startswith(f"medreason: {python} is Python {version}; medreason needs 3.11.0 or newer: "), (
        _shown(proc)
    )


@pytest.mark.parametrize("version", ["3.11.0", "3.11.2", "3.11.12", "3.12.0", "3.14.1"])
def test_new_enough_python_passes_silently(tmp_path, version):
    proc = _make(f"PYTHON={_fake_python(tmp_path, version)}", "prerequisites")
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), _shown(proc)


def test_missing_python_is_named(tmp_path):
    proc = _make("PYTHON=python3-that-is-not-there", "prerequisites", env={"PATH": str(tmp_path)})
    assert _one_line(proc).startswith("medreason: python3-that-is-not-there not found: install Python 3.11.0"), _shown(
        proc
    )


def test_python_found_on_path(tmp_path):
    """The interpreter named in the message is the one PATH finds, with its full path."""
    python = _fake_python(tmp_path, "3.10.14")
    proc = _make("prerequisites", env={"PATH": f"{python.parent}:{os.environ['PATH']}"})
    assert _one_line(proc).startswith(f"medreason: {python} is Python 3.10.14;"), _shown(proc)


def test_python_without_venv_module_names_python3_venv(tmp_path):
    python = _fake_python(tmp_path, "3.11.9", imports=False)
    proc = _make(f"PYTHON={python}", "prerequisites")
    assert _one_line(proc) == (
        f"medreason: {python} has no venv/ensurepip module: install python3-venv "
        "(Debian/Ubuntu: sudo apt-get install python3-venv), then run make again"
    ), _shown(proc)


def test_setup_checks_prerequisites_first(tmp_path):
    """`make book` and `make test` reach the check through setup -> venv: nothing is made with an old Python."""
    venv = tmp_path / "venv"
    proc = _make(f"VENV={venv}", f"PYTHON={_fake_python(tmp_path, '3.10.14')}", "setup")
    assert "is Python 3.10.14; medreason needs 3.11.0 or newer" in _one_line(proc), _shown(proc)
    assert not venv.exists(), "a venv was made before the check"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^venv: prerequisites$", makefile, re.M) and re.search(r"^setup: venv$", makefile, re.M)
    for target in ("book", "test", "test-fast"):
        assert re.search(rf"^{target}: setup$", makefile, re.M), f"make {target} does not go through setup"


@pytest.mark.infra
def test_venv_without_pip_is_repaired(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert not _has_pip(venv)
    proc = _make(f"VENV={venv}", "venv")
    assert proc.returncode == 0, _shown(proc)
    assert "has no pip: repairing it with python -m ensurepip" in proc.stdout, _shown(proc)
    assert _has_pip(venv), f"{venv} still has no pip after `make venv`"
    # a healthy venv is left alone, silently
    again = _make(f"VENV={venv}", "venv")
    assert again.returncode == 0 and not again.stdout.strip(), _shown(again)


@pytest.mark.infra
def test_unrepairable_venv_names_python3_venv(tmp_path):
    """A venv whose python can neither run pip nor ensurepip is recreated; when the system python cannot make
    one with pip either (Debian without python3-venv), make fails with one line naming the package."""
    venv = tmp_path / "venv"
    _script(venv / "bin" / "python", "exit 1")  # no pip, no ensurepip
    # passes `make prerequisites` (3.11.9, imports venv and ensurepip) but `python3 -m venv` fails
    no_venv_python = _fake_python(tmp_path, "3.11.9", venv_fails=True)
    proc = _make(f"VENV={venv}", f"PYTHON={no_venv_python}", "venv")
    assert proc.returncode != 0, _shown(proc)
    assert "recreating it" in proc.stdout, _shown(proc)
    assert not venv.exists(), "the broken venv was not removed"
    message = [line for line in proc.stderr.splitlines() if line.startswith("medreason:")]
    assert len(message) == 1 and "install python3-venv" in message[0], _shown(proc)


def test_unreachable_torch_index_fails_on_github(tmp_path):
    """On GitHub Actions an unreachable CPU index must not fall back to PyPI (whose torch bundles CUDA)."""
    venv = tmp_path / "venv"
    python = _script(
        venv / "bin" / "python", 'case "$*" in *"import sys, torch"*) exit 1;; esac\nexec "%s" "$@"' % sys.executable
    )
    assert python.is_file()
    # port 9 (discard) on loopback: nothing listens, the connection is refused at once
    proc = _make(f"VENV={venv}", "TORCH_INDEX=http://127.0.0.1:9/cpu", "torch", env={"GITHUB_ACTIONS": "true"})
    assert proc.returncode != 0, _shown(proc)
    assert "is unreachable; on GitHub Actions that is an error" in proc.stderr, _shown(proc)
    assert "pip install torch" not in proc.stdout, _shown(proc)


def test_stamp_depends_on_torch_pin_and_makefile(tmp_path):
    """`make -p` prints make's rule database: the stamp's name carries the torch pin and it depends on the
    Makefile, so a new pin or a Makefile change re-runs the install."""
    rules = {}
    for pin in ("2.13.0", "9.9.9"):
        proc = _make("-pq", f"VENV={tmp_path}", f"TORCH_VERSION={pin}", "clean")
        found = re.findall(rf"^({re.escape(str(tmp_path))}/\.medreason-installed\S*): (.*)$", proc.stdout, re.M)
        assert len(found) == 1, f"no single stamp rule in make's database for TORCH_VERSION={pin}: {found}"
        rules[pin] = found[0]
    assert rules["2.13.0"][0] != rules["9.9.9"][0], f"the stamp does not change with the torch pin: {rules}"
    for pin, (stamp, prerequisites) in rules.items():
        assert stamp.endswith(pin), f"the stamp {stamp} does not carry TORCH_VERSION={pin}"
        assert {"Makefile", "pyproject.toml", "requirements.lock"} <= set(prerequisites.split()), prerequisites
