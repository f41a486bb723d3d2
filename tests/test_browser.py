"""tests/browser.py finds each kind of Chromium install, in its order, using fake executables (tmp folders on
PATH, a fake Playwright browser folder through PLAYWRIGHT_BROWSERS_PATH). Nothing is launched."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import PATH_NAMES, Chromium, ChromiumError, find_chromium
from prerequisites import missing

try:
    from playwright import sync_api
except ImportError:  # pragma: no cover - depends on the environment
    missing("the playwright Python package", "make setup, or .venv/bin/pip install -e '.[test]'", module=True)


def _fake(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    path.chmod(0o755)
    return path


@pytest.fixture()
def no_playwright_browser(tmp_path, monkeypatch) -> Path:
    """Playwright looks for its browsers in an empty folder."""
    folder = tmp_path / "ms-playwright"
    folder.mkdir()
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(folder))
    monkeypatch.delenv("MEDREASON_CHROMIUM", raising=False)
    return folder


def _playwright_expected_path() -> Path:
    with sync_api.sync_playwright() as p:
        return Path(p.chromium.executable_path)


@pytest.fixture()
def fake_playwright_browser(no_playwright_browser) -> Path:
    """A fake executable where Playwright's own Chromium would be installed (under PLAYWRIGHT_BROWSERS_PATH)."""
    expected = _playwright_expected_path()
    assert no_playwright_browser in expected.parents, expected
    return _fake(expected)


@pytest.mark.parametrize("present", [PATH_NAMES[i:] for i in range(len(PATH_NAMES))], ids=lambda p: p[0])
def test_path_names_in_order(tmp_path, no_playwright_browser, present):
    """chromium, then chromium-browser, then google-chrome: the first name on PATH that exists wins."""
    bins = [tmp_path / "bin1", tmp_path / "bin2"]
    # spread the names over two PATH folders: the order of names decides, not the order of folders
    for i, name in enumerate(present):
        _fake(bins[(i + 1) % 2] / name)
    found = find_chromium({"PATH": ":".join(map(str, bins))})
    assert found == Chromium(str(bins[1] / present[0]), f"`{present[0]}` on PATH"), found
    assert found.launch_path == found.path


def test_nothing_found(tmp_path, no_playwright_browser):
    (tmp_path / "bin").mkdir()
    _fake(tmp_path / "bin" / "chromium-not-really")
    assert find_chromium({"PATH": str(tmp_path / "bin")}) is None


def test_non_executable_on_path_is_skipped(tmp_path, no_playwright_browser):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "chromium").write_text("not executable", encoding="utf-8")
    _fake(tmp_path / "bin" / "google-chrome")
    assert find_chromium({"PATH": str(tmp_path / "bin")}).path == str(tmp_path / "bin" / "google-chrome")


def test_playwright_browser_before_path(tmp_path, fake_playwright_browser):
    _fake(tmp_path / "bin" / "chromium")
    found = find_chromium({"PATH": str(tmp_path / "bin")})
    assert found.path == str(fake_playwright_browser) and found.playwright_managed, found
    assert found.launch_path is None, "Playwright's own browser is launched without executable_path"


def test_env_var_first(tmp_path, fake_playwright_browser):
    explicit = _fake(tmp_path / "custom" / "my-chrome")
    _fake(tmp_path / "bin" / "chromium")
    found = find_chromium({"MEDREASON_CHROMIUM": str(explicit), "PATH": str(tmp_path / "bin")})
    assert found == Chromium(str(explicit), "$MEDREASON_CHROMIUM")
    assert found.launch_path == str(explicit)


def test_env_var_not_executable_is_an_error(tmp_path, no_playwright_browser):
    _fake(tmp_path / "bin" / "chromium")
    with pytest.raises(ChromiumError, match="MEDREASON_CHROMIUM=.*missing.* is not an executable file"):
        find_chromium({"MEDREASON_CHROMIUM": str(tmp_path / "missing"), "PATH": str(tmp_path / "bin")})
