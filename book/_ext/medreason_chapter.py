"""What every chapter of the book runs first: work from the repository root, quietly.

The first code cell of every chapter finds the checkout, puts this folder on sys.path and calls it:

    here = Path.cwd()
    root = next(p for p in [here, *here.parents] if (p / "pyproject.toml").is_file() and (p / "configs").is_dir())
    sys.path.insert(0, str(root / "book" / "_ext"))
    from medreason_chapter import setup_chapter
    root = setup_chapter(root)

The cell walks up from the working directory, so a chapter runs the same in the book build (myst-nb runs
chapters in `book/`), in JupyterLab (`book/*.md` through jupytext, or `book/_notebooks/*.ipynb` from
`make notebooks`) and as an `.ipynb` downloaded from the site into any folder of a clone. The recipes
(`configs/...`), the adapter (`lora_adapter/...`) and the MLflow store (`results/...`) are relative paths
from the repository root, so `setup_chapter` moves there first.

It also keeps the pages readable: progress bars and Python warnings are switched off, and medreason's
log lines go to stdout as `medreason: ...`, the way the command line prints them. Libraries' own log
records go to stdout too, at WARNING and above, so nothing lands on stderr unless something failed.
It sets no network switch: the Makefile sets HF_HUB_OFFLINE=1 for the book build and for `make lab`, and a
reader who runs a chapter online elsewhere gets the Hub as usual.

This lives in book/_ext/, not in the installed package: only the book needs it. The Sphinx side of the
book (reading order, notebook downloads) is `medreason_sphinx.py` beside it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

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
# lm-eval warns at WARNING that it was handed a model object rather than a name, which medreason does on purpose
# bitsandbytes, on CPUs with AVX512-BF16, warns at import that the optional Hub kernel package `kernels` is
# missing (it falls back to its own 4-bit CPU code, which medreason's QLoRA path uses)
_LEVELS = {"lm_eval": logging.ERROR, "lm-eval": logging.ERROR, "bitsandbytes.backends.cpu.ops": logging.ERROR}


def repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds both
    pyproject.toml and configs/: the root of a medreason checkout."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "configs").is_dir():
            return folder
    raise FileNotFoundError(f"no medreason checkout (pyproject.toml and configs/) at or above {here}")


def setup_chapter(start: str | Path | None = None) -> Path:
    """chdir to the repository root, silence progress bars and warnings, log to stdout; returns the root."""
    root = repo_root(start)
    os.chdir(root)
    # tqdm reads TQDM_DISABLE when a bar is created; set before any library makes one.
    os.environ["TQDM_DISABLE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "FALSE")
    # MLflow adds its own stderr handler at import unless told not to; its records then reach ours
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    warnings.filterwarnings("ignore")
    _log_to_stdout()
    _quiet_libraries()
    return root


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
    """Progress bars and INFO chatter off in the libraries that are already installed."""
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_default_handler()
        transformers.utils.logging.enable_propagation()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:
        pass
