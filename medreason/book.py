"""What every chapter of the book runs first, in one line:

    from medreason.book import setup; chapter = setup()

`setup()` finds the checkout, works from its root, keeps the page readable and says which recipe the chapter
trains with. It runs the same wherever a chapter runs:

- in the book build (myst-nb runs chapters in `book/`) and in JupyterLab (`book/*.md` through jupytext, or
  `book/_notebooks/*.ipynb` from `make notebooks`): the checkout is the nearest folder at or above the working
  directory that holds both `pyproject.toml` and `configs/`;
- as an `.ipynb` downloaded from the site into any folder of a clone: the same walk up finds that clone;
- saved anywhere else: the checkout that this (editable) install of medreason lives in;
- on Colab: the launch notebook clones the repository the site was built from, installs it and moves into it
  before this line runs (`medreason_sphinx.colab_notebook` writes that first cell).

The recipes (`configs/...`), the adapter (`lora_adapter/...`) and the MLflow store (`results/...`) are paths
from the repository root, so `setup` moves there. It sets no network switch: the Makefile sets
HF_HUB_OFFLINE=1 for the book build and for `make lab`, and a reader online elsewhere gets the Hub as usual.

The page stays readable: the libraries' progress bars, INFO chatter and Python warnings are off, and
medreason's log lines go to stdout as `medreason: ...`, the way the command line prints them, progress
included (`MEDREASON_PROGRESS=lines`: one line per logging step of training, one per tenth of a long
generation). Libraries' own log records reach stdout at WARNING and above, so nothing lands on stderr unless
something failed.

`chapter.recipe` is the recipe a chapter trains with: the CPU recipe, or the GPU recipe where CUDA is present
(a Colab GPU runtime, say). `setup(gpu=False)` keeps the CPU recipe on a GPU machine.

This module changes the process on purpose (working directory, environment, logging): it is for notebooks,
which it sets up, and nothing in the package imports it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

CPU_RECIPE = "configs/smollm2-135m-cpu.yaml"
GPU_RECIPE = "configs/smollm2-135m-gpu.yaml"

# Loggers that are chatty at INFO; medreason's own stay at INFO.
_QUIET_LOGGERS = (
    "transformers",
    "datasets",
    "trl",
    "peft",
    "accelerate",
    "mlflow",
    "alembic",
    "httpx",
    "urllib3",
    "filelock",
    "fsspec",
    "matplotlib",
    "lm_eval",
    "lm-eval",
    "numexpr",
    "torch",
)
# lm-eval warns at WARNING that it was handed a model object rather than a name, which medreason does on purpose;
# bitsandbytes, on CPUs with AVX512-BF16, warns at import that the optional Hub kernel package `kernels` is
# missing (it falls back to its own 4-bit CPU code, which medreason's QLoRA path uses)
_LEVELS = {"lm_eval": logging.ERROR, "lm-eval": logging.ERROR, "bitsandbytes.backends.cpu.ops": logging.ERROR}


@dataclass(frozen=True)
class Chapter:
    """What `setup()` settled: the checkout's root (now the working directory), the recipe to train with,
    and whether that is the GPU recipe."""

    root: Path
    recipe: str
    gpu: bool


def repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds both pyproject.toml
    and configs/; failing that, the checkout this medreason is installed from (an editable install)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if _is_checkout(folder):
            return folder
    installed = Path(__file__).resolve().parent.parent
    if _is_checkout(installed):
        return installed
    raise FileNotFoundError(
        f"no medreason checkout (pyproject.toml and configs/) at or above {here}: "
        "open the notebook inside a clone of the repository"
    )


def _is_checkout(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "configs").is_dir()


def pick_recipe(gpu: bool | None = None) -> tuple[str, bool]:
    """(recipe, gpu): the GPU recipe where CUDA is present (or gpu=True), else the CPU recipe."""
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    return (GPU_RECIPE if gpu else CPU_RECIPE), bool(gpu)


def setup(start: str | Path | None = None, *, gpu: bool | None = None) -> Chapter:
    """chdir to the repository root, quiet the libraries, log to stdout; returns the root and the recipe."""
    root = repo_root(start)
    os.chdir(root)
    # medreason's own progress as log lines (training steps, long generations); the libraries' bars off.
    # Read when a bar or a library is created, so set before any is.
    os.environ["MEDREASON_PROGRESS"] = "lines"
    os.environ["TQDM_DISABLE"] = "1"
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ[name] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "FALSE")
    # MLflow adds its own stderr handler at import unless told not to; its records then reach ours
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    warnings.filterwarnings("ignore")
    _log_to_stdout()
    _quiet_libraries()
    recipe, on_gpu = pick_recipe(gpu)
    return Chapter(root=root, recipe=recipe, gpu=on_gpu)


def _log_to_stdout():
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(_ShortNames())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("medreason").setLevel(logging.INFO)
    for name in (*_QUIET_LOGGERS, *_LEVELS):
        logger = logging.getLogger(name)
        logger.setLevel(_LEVELS.get(name, logging.WARNING))
        # libraries that attach their own stderr handler (transformers, datasets) would print twice
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr:
                logger.removeHandler(h)
        logger.propagate = True


class _ShortNames(logging.Filter):
    """`medreason.train: ...` -> `medreason: ...`, as the CLI prints it."""

    def filter(self, record):
        if record.name.startswith("medreason"):
            record.name = "medreason"
        return True


def _quiet_libraries():
    """Progress bars and INFO chatter off in the libraries that are installed (imported here: a chapter
    imports them anyway)."""
    try:
        import transformers
    except ImportError:
        pass
    else:
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_default_handler()
        transformers.utils.logging.enable_propagation()
    try:
        import datasets
    except ImportError:
        pass
    else:
        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
