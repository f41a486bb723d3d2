"""The package's shape (STYLE.md): imports go one way, recipes are built from medreason.run and never from each
other, no module reaches for another's private names, and the code passes ruff."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "medreason"
RECIPES = {"sft", "grpo"}


def _imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported medreason module, name)}, at module level and inside functions alike."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medreason":
                parts = node.module.split(".")
                for alias in node.names:
                    found |= {(parts[1], alias.name)} if len(parts) > 1 else {(alias.name, "")}
            elif isinstance(node, ast.Import):
                found |= {(a.name.split(".")[1], "") for a in node.names if a.name.startswith("medreason.")}
        graph[path.stem] = {(m, n) for m, n in found if m != path.stem}
    return graph


def test_no_import_circle():
    graph = {m: {d for d, _ in deps} for m, deps in _imports().items()}
    visiting, done = set(), set()

    def visit(module, trail):
        if module in done or module not in graph:
            return
        assert module not in visiting, "import circle: " + " -> ".join([*trail, module])
        visiting.add(module)
        for dep in sorted(graph[module]):
            visit(dep, [*trail, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_recipes_import_the_run_skeleton_and_not_each_other():
    graph = _imports()
    for recipe in RECIPES:
        deps = {d for d, _ in graph[recipe]}
        assert "run" in deps, recipe
        assert not deps & (RECIPES - {recipe}), f"{recipe} imports {deps & RECIPES}"
        assert "train" not in deps, f"{recipe} imports medreason.train: train only picks the recipe"
    assert not {d for d, _ in graph["run"]} & (RECIPES | {"train"})


def test_no_private_name_crosses_a_module():
    crossing = [
        f"{m} imports {d}.{n}"
        for m, deps in _imports().items()
        for d, n in deps
        if n.startswith("_") and n != "__version__"
    ]
    assert not crossing, crossing


def _ruff():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.fail("ruff is not installed in this environment: `make setup` installs it (the test extra)")
    return ruff


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_code_passes_ruff(command):
    """pyproject.toml [tool.ruff]: the configuration the pre-commit hook runs."""
    result = subprocess.run(
        [_ruff(), *command, "medreason", "benchmarks", "tests", "book/_ext", ".github"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
