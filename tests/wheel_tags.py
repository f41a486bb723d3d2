"""Record the wheel file names of the pinned packages whose wheels are platform specific, for tests/test_pixi.py
to check offline that every pixi platform can install each of them.

    python tests/wheel_tags.py --refresh    rewrite tests/data/wheel_tags.json from PyPI's JSON API

Run it with the project's venv Python after changing requirements.lock (`make lock`): which packages are
platform specific is read from the wheels installed in that venv (a `Tag:` other than `*-none-any` in their
WHEEL file; a pin not installed there, from its wheels on PyPI), and their pins from requirements.lock. torch is not among them: pixi takes it from conda-forge.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
DATA = REPO / "tests" / "data" / "wheel_tags.json"


def pins(lock: Path = LOCK) -> dict[str, str]:
    """requirements.lock as {name: version} (names as the lock spells them)."""
    result = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            result[name.strip()] = version.strip()
    return result


def platform_specific(pinned: dict[str, str]) -> dict[str, list[str]]:
    """{name: wheel file names} for the pins whose wheels are tagged for a platform. An installed pin is judged
    by its WHEEL file (no network); one not installed here, by its wheels on PyPI."""
    found = {}
    for name in sorted(pinned, key=str.lower):
        try:
            wheel = importlib.metadata.distribution(name).read_text("WHEEL") or ""
        except importlib.metadata.PackageNotFoundError:
            files = wheels(name, pinned[name])
            if any(not f.endswith("-none-any.whl") for f in files):
                found[name] = files
            continue
        tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
        if any(not tag.endswith("-none-any") for tag in tags):
            found[name] = wheels(name, pinned[name])
    return found


def wheels(name: str, version: str) -> list[str]:
    # the project-wide document, not /pypi/<name>/<version>/json: some PyPI mirrors serve only the former
    url = f"https://pypi.org/pypi/{name}/json"
    with urllib.request.urlopen(url, timeout=60) as response:
        release = json.load(response)["releases"].get(version)
    if not release:
        raise SystemExit(f"wheel_tags.py: {name} {version} (requirements.lock) is not on PyPI")
    return sorted(f["filename"] for f in release if f["packagetype"] == "bdist_wheel")


def refresh() -> dict:
    pinned = pins()
    packages = {name: {"version": pinned[name], "wheels": files} for name, files in platform_specific(pinned).items()}
    return {"source": "https://pypi.org/pypi/<name>/json, by tests/wheel_tags.py --refresh", "packages": packages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refresh", action="store_true", help=f"rewrite {DATA.relative_to(REPO)} from PyPI")
    if not parser.parse_args().refresh:
        parser.print_help()
        return 2
    data = refresh()
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{DATA.relative_to(REPO)}: {len(data['packages'])} platform-specific packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
