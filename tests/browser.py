"""Which Chromium the browser tests drive: resolved in this one place.

    from browser import find_chromium
    chromium = find_chromium()          # Chromium(path=..., source=..., playwright_managed=...) or None
    p.chromium.launch(executable_path=chromium.launch_path, ...)

Order (the first that exists wins):
  1. MEDREASON_CHROMIUM: an explicit executable; set but not executable is an error, not a fallback;
  2. Playwright's own browser (`python -m playwright install --with-deps chromium`, as the GitHub workflow
     does): launched without executable_path, Playwright's convention;
  3. `chromium`, `chromium-browser`, `google-chrome` on PATH (Debian's `chromium` package, which .ci/run
     installs because Playwright's download cannot work on a registry-only network).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "MEDREASON_CHROMIUM"
PATH_NAMES = ("chromium", "chromium-browser", "google-chrome")


class ChromiumError(RuntimeError):
    """MEDREASON_CHROMIUM names something that cannot be run."""


@dataclass(frozen=True)
class Chromium:
    path: str
    source: str  # how it was found, for messages
    playwright_managed: bool = False

    @property
    def launch_path(self) -> str | None:
        """executable_path for Playwright's launch(): None for Playwright's own browser."""
        return None if self.playwright_managed else self.path


def _executable(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


def playwright_chromium() -> str | None:
    """Where Playwright's own Chromium is installed, if it is (honours PLAYWRIGHT_BROWSERS_PATH)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    # Starting the driver only reads Playwright's browser registry; it launches nothing.
    with sync_playwright() as p:
        path = p.chromium.executable_path
    return path if path and _executable(path) else None


def find_chromium(env: dict[str, str] | None = None) -> Chromium | None:
    env = os.environ if env is None else env
    explicit = env.get(ENV_VAR, "")
    if explicit:
        if not _executable(explicit):
            raise ChromiumError(f"{ENV_VAR}={explicit} is not an executable file: fix the path or unset it")
        return Chromium(explicit, f"${ENV_VAR}")
    managed = playwright_chromium()
    if managed:
        return Chromium(managed, "Playwright's own browser", playwright_managed=True)
    for name in PATH_NAMES:
        found = shutil.which(name, path=env.get("PATH", os.defpath))
        if found:
            return Chromium(found, f"`{name}` on PATH")
    return None


def how_to_install() -> str:
    return (
        f"no Chromium: set {ENV_VAR}, or run `python -m playwright install --with-deps chromium`, "
        f"or install one of {', '.join(PATH_NAMES)} on PATH (Debian: apt-get install chromium)"
    )
