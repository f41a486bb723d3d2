"""The package's shape (STYLE.md): imports go one way, recipes are built from medreason.run and never from each
other, no module reaches for another's private names or runs past 400 lines, and the code passes ruff."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "medreason"


def _recipes() -> set[str]:
    """The recipe modules: every method medreason.recipe's registry finds, one file each in medreason/recipes/."""
    from medreason.recipe import names

    return {f"recipes.{name}" for name in names()}


def _imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported medreason module, name)}, at module level and inside functions alike."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medreason":
                parts = node.module.split(".")
                for alias in node.names:
                    found |= {(".".join(parts[1:]), alias.name)} if len(parts) > 1 else {(alias.name, "")}
            elif isinstance(node, ast.Import):
                found |= {(a.name.split(".", 1)[1], "") for a in node.names if a.name.startswith("medreason.")}
        graph[name] = {(m, n) for m, n in found if m != name}
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


def test_recipes_register_with_the_interface_and_never_import_each_other():
    """A method is one file of medreason/recipes/: it builds on medreason.recipe, imports no other method, and
    nothing but the registry's discovery imports it (the run, the CLI and the config read the registry)."""
    graph = _imports()
    recipes = _recipes()
    assert recipes == {f"recipes.{p.stem}" for p in (PACKAGE / "recipes").glob("*.py") if p.stem != "__init__"}
    for recipe in recipes:
        deps = {d for d, _ in graph[recipe]}
        assert "recipe" in deps, recipe
        assert not deps & (recipes - {recipe}), f"{recipe} imports {deps & recipes}"
        assert not deps & {"train", "run", "cli"}, f"{recipe} imports the entry points: they pick the recipe"
    importers = {m for m, deps in graph.items() for d, _ in deps if d in recipes}
    assert not importers - recipes, f"{importers - recipes} import a recipe module directly"


# keys that belong to one training method: the shared rooms never name them
METHOD_KEYS = ("init_adapter", "num_generations", "max_completion_length", "max_length", "evaluate_test", "packing")


def test_shared_rooms_name_no_methods_keys():
    shared = ["run.py", "train.py", "recipe.py", "config.py", "fieldtypes.py", "adapter.py"]
    found = [
        f"{name}: {key}"
        for name in shared
        for key in METHOD_KEYS
        if re.search(rf"\b{key}\b", (PACKAGE / name).read_text(encoding="utf-8"))
    ]
    assert not found, found


def test_no_private_name_crosses_a_module():
    crossing = [
        f"{m} imports {d}.{n}"
        for m, deps in _imports().items()
        for d, n in deps
        if n.startswith("_") and n != "__version__"
    ]
    assert not crossing, crossing


# a module a newcomer can read in one sitting: past this, split it into modules of one concern each
MAX_MODULE_LINES = 400


def test_no_module_is_over_the_line_limit():
    """Every module of the package, recipes included, is at most MAX_MODULE_LINES lines."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, ", ".join(f"{name} has {n} lines" for name, n in long.items()) + f" (at most {MAX_MODULE_LINES})"


def test_the_readme_layout_names_every_module():
    """README's Layout row for medreason/ is where a newcomer finds the rooms: each module is named there."""
    row = next(
        line
        for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `medreason/` |")
    )
    named = set(re.findall(r"`([\w/]+)`", row))
    modules = {p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__")} | {"recipes/"}
    assert not modules - named, f"README's layout row does not name {sorted(modules - named)}"


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
