"""Skips for a missing tool, said loudly: `missing("actionlint", "make setup")` skips the test with a reason that
names the tool and the command that installs it, and tests/conftest.py lists every such skip in a block at the end
of pytest's summary. With MEDREASON_REQUIRE_TOOLS=1 (.ci/run sets it) the same call fails the test instead: CI
must not pass by skipping its browser and lint tests."""

from __future__ import annotations

import os

import pytest

ENV_VAR = "MEDREASON_REQUIRE_TOOLS"
# the skip reason starts with this; conftest.py collects the skips by it
PREFIX = "missing prerequisite: "


def required() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("", "0")


def message(what: str, install: str) -> str:
    return f"{what} is not installed; install it with: {install}"


def missing(what: str, install: str, *, module: bool = False) -> None:
    """Skip (or, under MEDREASON_REQUIRE_TOOLS=1, fail) the calling test or, with module=True, its whole module."""
    if required():
        pytest.fail(f"{ENV_VAR} is set but {message(what, install)}", pytrace=False)
    pytest.skip(PREFIX + message(what, install), allow_module_level=module)
