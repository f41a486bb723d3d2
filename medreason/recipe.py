"""Training methods as recipes: a method is one module in medreason/recipes/ that registers a `Recipe`, and
`medreason train` finds it by the recipe file's `trainer` key. Nothing else names a method.

    from medreason.recipe import Recipe, register
    from trl import DPOConfig

    @register
    class DPO(Recipe):
        name = "dpo"
        config_class = DPOConfig            # TRL's config class: the recipe's keys are checked against it
        help = "direct preference optimisation on (prompt, chosen, rejected) rows"

        def load_data(self, run): ...              # before any model loads: bad data fails in a second
        def build_trainer(self, run, policy, data): ...   # TRL's trainer, from the loaded policy
        def summarise(self, run, trainer, data): ...      # final metrics, and the method's fields of medreason.json

medreason.run drives every recipe through the same phases, in this order (the shape of torchtune's recipe
interface and litgpt's setup -> fit):

    check -> load_data -> [session] load_model -> [tracked run] build_trainer -> fit -> summarise -> finish

A phase a recipe does not define keeps the default below (what SFT and GRPO share). Method checks that need no
data belong in the config class's `__post_init__`, as in TRL's own `grpo_config.py`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar

from medreason.errors import UserError


@dataclass
class Data:
    """What a recipe trains on: the datasets it hands its trainer, and a record of what they were (the
    provenance medreason.json, the model card and MLflow keep)."""

    train: Any
    eval: Any = None
    test: Any = None
    record: dict = field(default_factory=dict)  # kind, id or path, sha256 or revision, rows per split...
    description: str = ""


@dataclass
class Policy:
    """The model a recipe trains, its tokenizer, the LoRA to put on it (None when the model already carries its
    trainable adapter), and where its weights came from."""

    model: Any
    tokenizer: Any
    peft_config: Any
    provenance: dict


class Recipe:
    """One training method. Subclasses set `name`, `config_class` and `help`, and define at least `load_data`,
    `build_trainer` and `summarise`."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    help: ClassVar[str] = ""
    # recipe keys logged as MLflow params besides the ones every run logs (medreason.run.LOGGED_PARAMS)
    logged_params: ClassVar[frozenset[str]] = frozenset()
    # recipe keys that do not change the adapter the run produces (left out of the recipe hash)
    not_hashed: ClassVar[frozenset[str]] = frozenset()

    def hash_inputs(self, args, cfg, model_args) -> dict:
        """What decides the adapter besides the recipe's keys (GRPO: the weights of the adapter it continues)."""
        return {}

    def inputs(self, args, cfg, model_args) -> tuple:
        """Folders or files the run reads besides the base model and the dataset (GRPO: the adapter it continues):
        no save may land on them (medreason.guards.refuse_saves_onto_inputs)."""
        return ()

    def check(self, run) -> None:
        """Checks that need the settled run but no data and no model."""

    def check_resume(self, run, checkpoint) -> None:
        """--resume: the checkpoint's LoRA has the shape this run would build."""
        from medreason.checkpoints import check_resume

        check_resume(checkpoint, run.model_args)

    def load_data(self, run) -> Data:
        raise NotImplementedError

    def load_model(self, run) -> Policy:
        """The base model with a new LoRA described by the recipe's lora_* keys."""
        from medreason.models import load_base, peft_config

        model, tokenizer, provenance = load_base(run.model_args)
        return Policy(model, tokenizer, peft_config(run.model_args), provenance)

    def build_trainer(self, run, policy: Policy, data: Data):
        raise NotImplementedError

    def fit(self, run, trainer) -> None:
        trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)

    def summarise(self, run, trainer, data: Data) -> tuple[dict, dict]:
        """(final metrics, the method's own fields of medreason.json)."""
        raise NotImplementedError

    def trained_model(self, trainer):
        """The model to save: the trainer's, unwrapped."""
        return trainer.accelerator.unwrap_model(trainer.model)


REGISTRY: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: make a recipe known by its `name` (a second recipe of the same name is an error)."""
    for attribute in ("name", "config_class"):
        if not hasattr(cls, attribute):
            raise TypeError(f"recipe {cls.__name__} has no {attribute}")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"two recipes are named {cls.name!r}: {REGISTRY[cls.name].__name__} and {cls.__name__}")
    REGISTRY[cls.name] = cls
    return cls


_discovered = False


def discover() -> None:
    """Import every module of medreason/recipes/ once: each registers its recipe."""
    global _discovered
    if _discovered:
        return
    import medreason.recipes as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    _discovered = True


def names() -> tuple[str, ...]:
    discover()
    return tuple(sorted(REGISTRY))


def get(name: str) -> Recipe:
    discover()
    if name not in REGISTRY:
        raise UserError(f"trainer '{name}' is unknown: choose one of {', '.join(names())}")
    return REGISTRY[name]()
