"""Progress of long work: a tqdm bar (done/total, rate, ETA) on a terminal, a log line every 10 % elsewhere.

    from medreason.progress import progress
    with progress(total=len(items), desc="generate (adapter)", unit="q") as bar:
        for chunk in batches:
            ...
            bar.update(len(chunk))

Where it goes, decided once per bar:
- stderr is a terminal: a tqdm bar on stderr;
- stderr is not a terminal (a pipe, a log file, CI), or `MEDREASON_PROGRESS=lines`: one log line (logger
  `medreason.progress`, INFO) at every 10 % and at the end, with the same count, rate and ETA;
- `MEDREASON_PROGRESS=off`, or `TQDM_DISABLE=1` without `MEDREASON_PROGRESS=lines`: nothing. (The book sets
  both TQDM_DISABLE=1, for the libraries' bars, and MEDREASON_PROGRESS=lines: medreason's own lines show.)
Work that ends within `MEDREASON_PROGRESS_DELAY` seconds (default 2) shows neither bar nor lines.
The CLI's `--quiet` sets `MEDREASON_PROGRESS=lines` for its own process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)
ENV = "MEDREASON_PROGRESS"  # bar | lines | off (default: bar on a terminal, lines elsewhere)
MARKS = 10  # a line at every tenth of the work when there is no bar
DELAY_ENV = "MEDREASON_PROGRESS_DELAY"  # seconds before the first line or bar (default 2): quick work stays quiet


def mode() -> str:
    """'bar', 'lines' or 'off' for a bar made now."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted == "lines":  # asked for by name: wins over TQDM_DISABLE, which is meant for the libraries' bars
        return "lines"
    if wanted == "off" or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        return "off"
    return "bar" if wanted == "bar" or _isatty(sys.stderr) else "lines"


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get(DELAY_ENV, "2")))
    except ValueError:
        return 2.0


def _width(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress(total: int, desc: str, unit: str = "it"):
    """A counter for `total` units of work; `.update(n)` after each piece. See the module docstring."""
    how = mode()
    if how == "bar":
        from tqdm.auto import tqdm

        # a terminal that reports no size (a bare pseudo-terminal: 0 x 0) makes tqdm 4.70 hide the bar as
        # "below the last row": give it 100 columns and 24 rows then
        bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            leave=True,
            delay=_delay(),
            **({"dynamic_ncols": True} if _width(sys.stderr) else {"ncols": 100, "nrows": 24}),
        )
        try:
            yield bar
        finally:
            bar.close()
        return
    counter = _Lines(total, desc, unit, quiet=how == "off")
    yield counter
    counter.close()


class _Lines:
    """The bar's stand-in without a terminal: a line at each 10 % crossed, and one at the end."""

    def __init__(self, total: int, desc: str, unit: str, quiet: bool):
        self.total, self.desc, self.unit, self.quiet = max(int(total), 0), desc, unit, quiet
        self.n, self.start, self.next_mark, self.said_end = 0, time.monotonic(), 1, False
        self.delay = _delay()

    def update(self, n: int = 1):
        self.n += n
        if self.quiet or not self.total:
            return
        crossed = min(MARKS, self.n * MARKS // self.total)  # whole tenths done, in integers (no float drift)
        if crossed >= self.next_mark:
            self.next_mark = crossed + 1  # one line however many marks a large piece crossed
            self._say()

    def close(self):
        if not self.quiet and self.total and not self.said_end and self.n > 0:
            self._say()

    def _say(self):
        elapsed = time.monotonic() - self.start
        if elapsed < self.delay:  # work that finishes within the delay says nothing
            return
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        self.said_end = self.n >= self.total
        log.info(
            "%s: %d/%d %s (%.0f%%), %.2f %s/s, ETA %s",
            self.desc,
            self.n,
            self.total,
            self.unit,
            100 * self.n / self.total,
            rate,
            self.unit,
            _duration(left),
        )


def _duration(seconds: float) -> str:
    if seconds != seconds:  # nan: no rate yet
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# the libraries' own bars (datasets' map, transformers' weight loading, huggingface_hub downloads): read from the
# environment when each library is imported (datasets 4, transformers 5.24, huggingface_hub 1.x)
LIBRARY_BARS_OFF = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")


@contextmanager
def library_bars():
    """Within a command: without a terminal (or with --quiet / MEDREASON_PROGRESS=lines|off) the libraries' own tqdm
    bars are off too, since piped they print carriage-return lines into logs; on a terminal they stay. The
    environment is put back afterwards (it takes effect for libraries imported inside the block: the CLI imports
    them inside its commands)."""
    if mode() == "bar":
        yield
        return
    before = {name: os.environ.get(name) for name in LIBRARY_BARS_OFF}
    os.environ.update(dict.fromkeys(LIBRARY_BARS_OFF, "1"))
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def training_callback():
    """A transformers TrainerCallback that reports training in the same form as every other long step: the bar
    (steps done/total, rate, ETA) on a terminal, and at each logging step one line

        step 9/27 (33%)  loss 1.2345  812 tokens/s  ETA 1m 05s

    (validation passes as `eval at step 9/27: eval_loss 1.1876`), through the bar's `write` on a terminal and as
    a log line otherwise; nothing under MEDREASON_PROGRESS=off / TQDM_DISABLE. It replaces transformers' own
    ProgressCallback and PrinterCallback (see `use_training_progress`). Tokens/s comes from TRL's cumulative
    `num_tokens`; the ETA from this process's own steps (a resumed run does not count the steps it skipped)."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self):
            self.bar_cm = self.bar = None
            self.start = self.first_step = None
            self.last_tokens = self.last_time = None

        def on_train_begin(self, args, state, control, **kw):
            self.how = mode()
            self.total = state.max_steps
            self.start, self.first_step = time.monotonic(), state.global_step
            if self.how == "bar":
                self.bar_cm = progress(total=state.max_steps, desc="train", unit="step")
                self.bar = self.bar_cm.__enter__()
                self.bar.update(state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            line = self.line(state, logs or {})
            if line is None or self.how == "off":
                return
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                log.info("%s", line)

        def on_train_end(self, args, state, control, **kw):
            if self.bar_cm is not None:
                self.bar_cm.__exit__(None, None, None)
                self.bar_cm = self.bar = None

        def line(self, state, logs: dict) -> str | None:
            step, total = state.global_step, self.total or state.max_steps
            where = f"{step}/{total} ({100 * step / total:.0f}%)" if total else str(step)
            if "train_runtime" in logs:
                return None  # the final summary (train_loss, train_runtime, ...): the command prints its own
            evals = {k: v for k, v in logs.items() if k.endswith("_loss") and k != "loss" and isinstance(v, float)}
            if "loss" not in logs:
                if evals:
                    return f"eval at step {where}: " + "  ".join(f"{k} {v:.4f}" for k, v in evals.items())
                return None
            parts = [f"step {where}", f"loss {logs['loss']:.4f}"]
            if "reward" in logs:
                parts.append(f"reward {logs['reward']:.3f}")
            now, tokens = time.monotonic(), logs.get("num_tokens")
            if tokens is not None and self.last_tokens is not None and now > self.last_time:
                parts.append(f"{(tokens - self.last_tokens) / (now - self.last_time):,.0f} tokens/s")
            if tokens is not None:
                self.last_tokens, self.last_time = tokens, now
            done = step - self.first_step
            if done > 0 and total:
                parts.append(f"ETA {_duration((total - step) * (now - self.start) / done)}")
            return "  ".join(parts)

    return TrainingProgress()


def use_training_progress(trainer):
    """Swap transformers' progress bar and dict printer for `training_callback` (TrainerCallback API)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(training_callback())
