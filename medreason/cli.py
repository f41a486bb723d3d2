"""The `medreason` command: thin subcommands over the functions the book calls.

    medreason doctor                                   # versions, hardware, where the model comes from
    medreason data stats                               # the corpus: splits, token lengths, specialties
    medreason data validate my.jsonl                   # check a file; exit 2 on a bad row
    medreason train --config configs/smollm2-135m-cpu.yaml [--key value ...]
    medreason chat --adapter lora_adapter/SmolLM2-135M-Instruct --compare --prompt "..."
    medreason eval --adapter lora_adapter/SmolLM2-135M-Instruct --mode generate
    medreason export --adapter lora_adapter/SmolLM2-135M-Instruct --out merged/

Heavy libraries (torch, transformers) are imported inside the commands so that `--help` stays fast.
Bad input exits 2 with one line; a failure of the program exits 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys

from medreason.errors import Terminated, UserError
from medreason.progress import ENV as PROGRESS_ENV
from medreason.ranges import SEED, Range
from medreason.template import TEMPLATES

log = logging.getLogger("medreason")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if "--quiet" in argv:  # progress as log lines every 10 %, not bars (medreason.progress), for this call only
        argv.remove("--quiet")
        before = os.environ.get(PROGRESS_ENV)
        os.environ[PROGRESS_ENV] = "lines"
        try:
            return main(argv + (["--debug"] if debug else []))
        finally:
            if before is None:
                os.environ.pop(PROGRESS_ENV, None)
            else:
                os.environ[PROGRESS_ENV] = before
    parser = build_parser()
    setup_logging(debug)
    try:
        args, rest = parser.parse_known_args(argv)
        if rest and not getattr(args, "accepts_rest", False):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        from medreason.compat import quiet_library_warnings
        from medreason.progress import library_bars
        from medreason.run import stop_on_sigterm  # light: run.py imports torch only inside functions
        from medreason.tracking import quiet_mlflow

        # SIGTERM as Ctrl-C (exit 143); libraries' inner noise dropped; their bars off when stderr is no terminal;
        # MLflow's INFO lines (its database set-up) off unless --debug
        with (
            stop_on_sigterm(),
            quiet_library_warnings(),
            library_bars(),
            quiet_mlflow(logging.INFO if debug else logging.WARNING),
        ):
            result = args.func(args, rest) if getattr(args, "accepts_rest", False) else args.func(args)
        return int(result or 0)
    except UserError as e:
        if debug:
            raise
        print(f"medreason: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        resumable = " (checkpoints kept: continue with --resume)" if getattr(args, "accepts_rest", False) else ""
        print(f"medreason: stopped by SIGTERM{resumable}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("medreason: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if debug:
            raise
        if e.errno in FULL_DISK:  # the disk, not the program: one line naming the file, exit 2
            where = e.filename or "a file"
            print(f"medreason: error: {where}: {os.strerror(e.errno)}: free space or write elsewhere", file=sys.stderr)
            return 2
        return _failed(e)
    except Exception as e:  # a failure of the program, not of the input
        if debug:
            raise
        return _failed(e)


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _failed(e: Exception) -> int:
    """A failure of the program: one line (a library's message can run to a hundred lines of SQL), exit 1."""
    first = (str(e).strip().splitlines() or [""])[0]
    print(f"medreason: failed: {type(e).__name__}: {first} (run again with --debug for the traceback)", file=sys.stderr)
    return 1


class Parser(argparse.ArgumentParser):
    """Every option in both spellings, `--max_new_tokens` and `--max-new-tokens`, as `train` (TRL's parser)
    accepts them: subcommands made with `add_parser` are of this class too."""

    def add_argument(self, *names, **kwargs):
        other = [
            f"--{n[2:].replace('_', '-') if '_' in n else n[2:].replace('-', '_')}"
            for n in names
            if n.startswith("--") and ("_" in n or "-" in n[2:])
        ]
        return super().add_argument(*names, *[o for o in other if o not in names], **kwargs)

    def error(self, message: str):
        """One line instead of argparse's usage text: `medreason: error: ...` and exit 2, as for any bad input."""
        m = re.match(r"argument (--[\w-]+)[^:]*: invalid (int|float) value: '(.*)'$", message)
        if m:
            message = f"{m[1]} must be {'an integer' if m[2] == 'int' else 'a number'}, got {m[3]}"
        elif m := re.match(r"argument (--[\w-]+)[^:]*: ((?:must|cannot) .*)$", message):  # the checks below
            message = f"{m[1]} {m[2]}"
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="medreason",
        description="Fine-tune small language models for medical reasoning with TRL and LoRA "
        "(for teaching; not for clinical use).",
        epilog="Add --debug to any command to see a traceback on errors, --quiet for progress as a log line every "
        "10 %% instead of bars (also MEDREASON_PROGRESS=lines|off).",
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="versions, hardware, and where the default model loads from")
    doctor.add_argument("--model", default=None, help="model id or folder to resolve (default SmolLM2-135M-Instruct)")
    doctor.set_defaults(func=_cmd("medreason.doctor", "run"))

    data = sub.add_parser("data", help="inspect and validate medical reasoning data")
    dsub = data.add_subparsers(title="data commands", metavar="ACTION")
    stats = dsub.add_parser("stats", help="splits, token-length percentiles, truncation, specialties, duplicates")
    stats.add_argument("--dataset", default="bundled", help="'bundled', a Hub id, or a local file")
    stats.add_argument("--dataset-config", default="en")
    stats.add_argument("--model", default=None, help="tokenizer to measure lengths with")
    stats.add_argument("--max-length", type=at_least(1), default=1024, help="report how many examples this truncates")
    stats.add_argument(
        "--template", type=one_of(TEMPLATES), default="think", help="completion template: think or huatuo"
    )
    stats.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of failing")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(func=_cmd("medreason.data", "cli_stats"))
    validate = dsub.add_parser("validate", help="check a JSON/JSONL/CSV/Parquet file; exit 2 on errors")
    validate.add_argument("file")
    validate.add_argument("--skip-invalid", action="store_true", help="report bad rows but exit 0 if any row is good")
    validate.set_defaults(func=_cmd("medreason.data", "cli_validate"))

    train = sub.add_parser(
        "train",
        help="LoRA/QLoRA SFT with TRL, tracked in MLflow",
        description="Train a LoRA adapter. Any key of the recipe (medreason, SFTConfig or ModelConfig "
        "fields) can be overridden as --key value.",
        add_help=False,
    )
    train.add_argument("-h", "--help", action="store_true", help="list every key a recipe accepts")
    train.set_defaults(func=_train, accepts_rest=True)

    chat = sub.add_parser("chat", help="chat with the base model or an adapter; --compare shows both")
    chat.add_argument("--model", default=None, help="base model (default: the adapter's base, or SmolLM2)")
    chat.add_argument("--adapter", default=None, help="a LoRA adapter folder")
    chat.add_argument("--prompt", default=None, help="answer one question and exit")
    chat.add_argument("--questions", default=None, help="a text or JSONL file of questions; answers go to --out")
    chat.add_argument(
        "--out",
        type=file_to_write,
        default=None,
        help="where --questions writes its JSONL (default results/chat.jsonl)",
    )
    chat.add_argument("--compare", action="store_true", help="base and adapter side by side, one copy of the weights")
    chat.add_argument("--max-new-tokens", type=at_least(1), default=256)
    chat.add_argument("--temperature", type=at_least(0.0, float), default=0.7)
    chat.add_argument("--top-p", type=probability, default=0.9)
    chat.add_argument("--repetition-penalty", type=above(0.0), default=1.1, help="1 is none; above 1 penalises repeats")
    chat.add_argument("--greedy", action="store_true", help="deterministic greedy decoding")
    chat.add_argument("--seed", type=seed, default=0)
    chat.set_defaults(func=_cmd("medreason.chat", "cli"))

    ev = sub.add_parser(
        "eval",
        help="base vs adapter on a multiple-choice benchmark: generated reasoning or option "
        "log-likelihoods, paired statistics, accuracy per group",
    )
    ev.add_argument("--adapter", default=None, help="a LoRA adapter folder (omit to evaluate the base only)")
    ev.add_argument("--model", default=None)
    ev.add_argument(
        "--mode",
        type=one_of(("generate", "loglik")),
        default="loglik",
        help="generate: the model reasons in its chat template and the chosen option is extracted; "
        "loglik: lm-eval scores each option label (default)",
    )
    ev.add_argument(
        "--mcq",
        default=None,
        help="a benchmark file (JSONL, JSON, CSV or Parquet; 2-10 options; default: the bundled benchmark)",
    )
    ev.add_argument(
        "--split",
        type=one_of(("heldout", "pool", "all")),
        default="heldout",
        help="which items of the bundled benchmark (ignored with --mcq); pool is GRPO's training set",
    )
    ev.add_argument(
        "--limit",
        type=at_least(1),
        default=None,
        help="a subset of this many items, stratified by group with --seed (never the first N)",
    )
    ev.add_argument("--seed", type=seed, default=0, help="seed of the --limit subset")
    ev.add_argument("--max-new-tokens", type=at_least(1), default=256, help="generate mode: the thinking budget")
    ev.add_argument(
        "--samples",
        type=at_least(2),
        default=None,
        help="generate mode: draw K answers per item at --temperature and report pass@1, pass@4, pass@8 and "
        "pass@K (the unbiased estimator of Chen et al. 2021) instead of one greedy answer",
    )
    ev.add_argument("--temperature", type=above(0.0), default=1.0, help="--samples: the sampling temperature")
    ev.add_argument(
        "--repetition-penalty",
        type=above(0.0),
        default=1.0,
        help="generate mode: 1 is pure greedy (default); 1.1, as `chat` uses, breaks small models' loops",
    )
    ev.add_argument("--chat", action="store_true", help="loglik mode: prompts through the chat template")
    ev.add_argument(
        "--no-cache",
        action="store_true",
        help="generate mode: do not reuse answers cached under results/cache/generate/",
    )
    ev.add_argument(
        "--tasks", default="medreason_mcq", help="loglik mode: comma-separated lm-eval tasks (Hub tasks need network)"
    )
    ev.add_argument("--run-name", default=None, help="results/<run-name>/eval.json (default: the adapter's name)")
    ev.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        help="answers decoded together (default 64 in generate mode, 8 in loglik mode)",
    )
    ev.add_argument(
        "--force",
        action="store_true",
        help="replace results/<run-name>/ even when it holds the results of another adapter",
    )
    ev.set_defaults(func=_cmd("medreason.evaluate", "cli"))

    export = sub.add_parser("export", help="merge an adapter into the full-precision base and save it")
    export.add_argument("--adapter", required=True)
    export.add_argument("--out", type=folder_to_write, required=True)
    export.add_argument("--model", default=None)
    export.add_argument("--force", action="store_true", help="replace an existing non-empty --out folder")
    export.set_defaults(func=_cmd("medreason.export", "cli"))
    return p


# --------------------------------------------------------------------------------------------- value checks
# argparse runs these while parsing, so a bad value fails before any command imports torch. Their messages
# become `--option must ...` (Parser.error).


def at_least(low, kind=int) -> Range:
    """An argparse type: a number of `kind` at least `low` (never NaN or infinite), checked before any import."""
    return Range(f">= {low}", kind)


def above(low: float) -> Range:
    return Range(f"> {low}", float)


probability = Range("(0, 1]", float)
seed = Range(SEED)  # torch.manual_seed and numpy refuse others, after the model has loaded


def one_of(choices):
    def check(text: str):
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got '{text}'")
        return text

    check.choices = tuple(choices)
    return check


def file_to_write(text: str) -> str:
    """A file path the command may create or replace: not a folder, and its parent is not a file."""
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a file path, but {text} is a folder (name a .jsonl file in it)")
    _parent_is_a_folder(path, text)
    return text


def folder_to_write(text: str) -> str:
    """A folder path the command may create: not an existing file, and no file on the way to it."""
    from pathlib import Path

    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a folder, but {text} is a file (choose a new folder name)")
    _parent_is_a_folder(path, text)
    return text


def _parent_is_a_folder(path, text: str):
    from medreason.io import first_existing

    parent = first_existing(path.absolute().parent)
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot be created: {parent} is a file, not a folder (got {text})")


def _cmd(module: str, name: str):
    """Import the command's module only when it runs."""

    def run(*a):
        import importlib

        return getattr(importlib.import_module(module), name)(*a)

    return run


def _train(args, rest):
    if args.help:  # every key of the recipe's classes: the trainer a `--trainer` override names, else SFT
        from medreason.config import print_train_help, trainer_override

        print_train_help(trainer_override(rest) or "sft")
        return 0
    return _cmd("medreason.train", "cli")(args, rest)


def setup_logging(debug: bool = False):
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="medreason: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock", "alembic", "matplotlib", "fsspec", "lm_eval", "lm-eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns on AVX512-BF16 CPUs that the optional Hub package `kernels` is missing, then uses its
    # own CPU code: nothing for the user to act on
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
