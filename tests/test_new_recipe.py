"""A new training method touches only its recipe file, its YAML and its test (issue 30). A throwaway method is
written to a temporary folder, outside medreason/, and registers itself through medreason.recipe as a file of
medreason/recipes/ would; a YAML naming it with `trainer:` parses into its config class, its own key included,
and the project's checks refuse an unknown key or a bad value of the new key in one line. No medreason module is
edited, and nothing trains: the registry is exercised by parsing only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from helpers import error_lines

PACKAGE = Path(__file__).resolve().parent.parent / "medreason"
NAME = "throwaway"

# what a contributor would save as medreason/recipes/throwaway.py: TRL's SFTConfig plus one key of its own
RECIPE_FILE = '''"""A throwaway method: SFT's config plus one key of its own."""

from dataclasses import dataclass, field

from trl import SFTConfig

from medreason.recipe import Data, Recipe, register


@dataclass
class ThrowawayConfig(SFTConfig):
    throwaway_margin: float = field(default=0.5, metadata={"help": "How far the throwaway method pushes."})


@register
class Throwaway(Recipe):
    name = "throwaway"
    config_class = ThrowawayConfig
    help = "a method that exists only in tests/test_new_recipe.py"
    logged_params = frozenset({"throwaway_margin"})

    def load_data(self, run):
        return Data(train=[])

    def build_trainer(self, run, policy, data):
        raise NotImplementedError("parsing only: nothing trains in this test")

    def summarise(self, run, trainer, data):
        return {}, {}
'''


@pytest.fixture()
def method(tmp_path, monkeypatch):
    """The throwaway recipe module, imported from a temporary folder; the registry is restored afterwards, so the
    method is gone for every other test (tests/test_architecture.py compares the registry with medreason/recipes/)."""
    from medreason import recipe

    recipe.discover()  # the shipped recipes first, into the registry that is put back afterwards
    monkeypatch.setattr(recipe, "REGISTRY", dict(recipe.REGISTRY))
    path = tmp_path / "recipes" / f"{NAME}.py"
    path.parent.mkdir()
    path.write_text(RECIPE_FILE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"{NAME}_recipe", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def _recipe(folder: Path, trainer: str = NAME, margin: str = "0.25", extra: str = "") -> str:
    """A recipe file for the throwaway method, as configs/ would hold it."""
    path = folder / "recipe.yaml"
    path.write_text(
        f"trainer: {trainer}\n"
        "model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "learning_rate: 2e-4\n"  # a string to YAML 1.1: read as a number for the new method too
        "max_steps: 3\n"
        f"output_dir: {folder / 'out'}\n"
        f"throwaway_margin: {margin}\n" + extra,
        encoding="utf-8",
    )
    return str(path)


def test_the_method_lives_outside_the_package_and_registers(method):
    from medreason.recipe import get, names

    assert NAME in names() and {"sft", "grpo"} <= set(names())
    assert type(get(NAME)) is method.Throwaway
    assert not Path(method.__file__).resolve().is_relative_to(PACKAGE)
    named = [p.name for p in PACKAGE.rglob("*.py") if NAME in p.read_text(encoding="utf-8")]
    assert not named, f"medreason modules name the throwaway method: {named}"


def test_its_yaml_parses_into_its_config_class(method, tmp_path):
    """`trainer:` picks the method; its own key is read from the YAML, overridden on the command line, and decides
    the recipe hash that names its adapter, as every shipped key does."""
    from medreason.config import parse_recipe
    from medreason.run import recipe_hash_of

    recipe = _recipe(tmp_path)
    args, cfg, model = parse_recipe(["--config", recipe])
    assert args.trainer == NAME and type(cfg) is method.ThrowawayConfig
    assert cfg.throwaway_margin == 0.25 and cfg.learning_rate == 2e-4 and cfg.max_steps == 3
    assert model.model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"

    overridden = parse_recipe(["--config", recipe, "--throwaway_margin", "0.75"])
    assert overridden[1].throwaway_margin == 0.75
    assert recipe_hash_of(*overridden) != recipe_hash_of(args, cfg, model)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"extra": "throwaway_margn: 1\n"}, "unknown config key 'throwaway_margn' (did you mean 'throwaway_margin'?)"),
        (
            {"extra": "num_generations: 4\n"},
            "unknown config key 'num_generations' (a grpo key: this recipe is for trainer throwaway)",
        ),
        ({"trainer": "sft"}, "unknown config key 'throwaway_margin' (a throwaway key: this recipe is for trainer sft)"),
        ({"margin": "wide"}, "throwaway_margin must be a number, got 'wide'"),
    ],
    ids=["misspelt own key", "another method's key", "its key in an SFT recipe", "its key's type"],
)
def test_bad_keys_are_refused_in_one_line(method, tmp_path, capsys, change, expected):
    """`medreason train` refuses each before any model loads, in the project's one line (exit 2)."""
    from medreason.cli import main

    recipe = _recipe(tmp_path, **change)
    assert main(["train", "--config", recipe]) == 2
    assert error_lines(capsys.readouterr().err) == [f"medreason: error: {recipe}: {expected}"]


def test_train_help_lists_the_methods_own_key(method, capsys):
    from medreason.cli import main

    assert main(["train", "--help", "--trainer", NAME]) == 0
    assert "--throwaway_margin" in capsys.readouterr().out
