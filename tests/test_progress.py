"""medreason.progress: a bar with a total on a terminal, percentage lines when stderr is piped, nothing in the
book; `medreason eval --mode generate` shows them (issue: minutes of silence after the model loaded)."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from medreason import progress

ROOT = Path(__file__).resolve().parent.parent


def test_mode_follows_the_terminal_and_the_environment(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(progress.sys, "stderr", open(os.devnull, "w"))  # not a terminal
    assert progress.mode() == "lines"
    monkeypatch.setenv(progress.ENV, "bar")
    assert progress.mode() == "bar"
    monkeypatch.setenv(progress.ENV, "off")
    assert progress.mode() == "off"
    monkeypatch.setenv(progress.ENV, "")
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the libraries' bars off: medreason's too, unless asked for
    assert progress.mode() == "off"
    monkeypatch.setenv(progress.ENV, "lines")  # what medreason.book.setup sets beside TQDM_DISABLE=1
    assert progress.mode() == "lines"


def test_lines_every_ten_percent_with_rate_and_eta(monkeypatch, caplog):
    monkeypatch.setenv(progress.ENV, "lines")
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    with caplog.at_level(logging.INFO, logger="medreason.progress"):
        with progress.progress(total=40, desc="generate (base)", unit="q") as bar:
            for _ in range(10):
                bar.update(4)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10, lines  # 10 %, 20 %, ... 100 %, once each
    assert lines[0].startswith("generate (base): 4/40 q (10%)") and "q/s, ETA" in lines[0]
    assert lines[-1].startswith("generate (base): 40/40 q (100%)")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medreason.progress"):
        with progress.progress(total=10, desc="x", unit="q") as bar:
            bar.update(5)  # one piece crossing five marks: one line, not five
            bar.update(5)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["x: 5/10 q", "x: 10/10 q"]


def test_quick_work_and_off_say_nothing(monkeypatch, caplog):
    monkeypatch.setenv(progress.ENV, "lines")  # the default delay: 2 s
    monkeypatch.delenv(progress.DELAY_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="medreason.progress"):
        with progress.progress(total=3, desc="x") as bar:
            bar.update(3)
    assert not caplog.records
    monkeypatch.setenv(progress.DELAY_ENV, "0")
    monkeypatch.setenv(progress.ENV, "off")
    with caplog.at_level(logging.INFO, logger="medreason.progress"):
        with progress.progress(total=3, desc="x") as bar:
            bar.update(3)
    assert not caplog.records


def _eval_cmd(adapter_dir, mcq_file):
    return [
        sys.executable,
        "-m",
        "medreason",
        "eval",
        "--adapter",
        str(adapter_dir),
        "--mode",
        "generate",
        "--mcq",
        str(mcq_file),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
        "--no-cache",
        "--run-name",
        "p",
    ]


@pytest.fixture()
def mcq_file(tmp_path):
    import json

    rows = [
        {
            "question": f"Question {i} about a patient?",
            "answer": "A",
            "options": {"A": "one", "B": "two", "C": "three", "D": "four"},
        }
        for i in range(4)
    ]
    path = tmp_path / "b.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _piped(argv, cwd, env):
    proc = subprocess.run(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600
    )
    return proc.returncode, proc.stderr


def _on_a_terminal(argv, cwd, env):
    """Run with stderr on a pseudo-terminal; (exit code, what the terminal showed)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process has gone and the terminal is closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    return proc.wait(timeout=600), screen.decode(errors="replace")


def _together(**runs):
    """Each name=(runner, argv, cwd, env) at the same time (the processes mostly wait on imports): {name: result}.
    Each runs in its own folder `cwd/<name>`: MLflow's default store (./mlflow.db) is per folder, and two processes
    creating one store at once collide in its schema migration."""
    from concurrent.futures import ThreadPoolExecutor

    for name, (_, _, cwd, _) in runs.items():
        (cwd / name).mkdir(exist_ok=True)
    runs = {name: (runner, argv, cwd / name, env) for name, (runner, argv, cwd, env) in runs.items()}
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(runner, *rest) for name, (runner, *rest) in runs.items()}
        return {name: f.result() for name, f in futures.items()}


def test_eval_shows_a_bar_on_a_terminal_and_lines_when_piped(adapter_dir, mcq_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), progress.DELAY_ENV: "0"}
    env.pop(progress.ENV, None)
    env.pop("TQDM_DISABLE", None)
    out = _together(
        tty=(_on_a_terminal, _eval_cmd(adapter_dir, mcq_file), tmp_path, env),
        piped=(_piped, _eval_cmd(adapter_dir, mcq_file), tmp_path, env),
    )
    # stderr on a pseudo-terminal: tqdm's bar, with the total
    rc, text = out["tty"]
    assert rc == 0, text[-2000:]
    assert "generate (base)" in text and "4/4" in text and ("q/s" in text or "s/q" in text), text[-2000:]
    # stderr piped: percentage lines instead of a bar
    rc, err = out["piped"]
    assert rc == 0, err[-2000:]
    assert "generate (adapter): 4/4 q (100%)" in err and "\r" not in err


# --------------------------------------------------------------------------------------------- library noise


def _stray_warnings(stderr: str) -> list[str]:
    """Lines that carry a warning medreason did not write (its own lines start with "medreason:")."""
    return [line for line in stderr.splitlines() if "warning" in line.lower() and not line.startswith("medreason:")]


def _sft_file(path: Path, n: int) -> Path:
    """n short rows of the medical-o1 schema, one specialty: enough for a few training steps of the tiny model."""
    import json

    rows = [
        {
            "Question": f"Question {i}: which drug treats condition {i}?",
            "Complex_CoT": "Think about the mechanism and the evidence first.",
            "Response": f"Drug {i}.",
            "specialty": "s",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_subcommands_print_no_library_warning(adapter_dir, tiny_model_dir, mcq_file, tmp_path):
    """data, train, eval, chat and export on the tiny model: stderr holds no Warning line of a library's
    (medreason.compat.LIBRARY_NOISE drops the known ones; anything new fails here and is looked at), and no line
    of MLflow's own (`... INFO mlflow.store.db.utils: Creating initial MLflow database tables...`)."""

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), progress.ENV: "lines"}
    env.pop("PYTHONWARNINGS", None)
    data_file = _sft_file(tmp_path / "sft.jsonl", 20)
    recipe = ROOT / "configs" / "smollm2-135m-cpu.yaml"
    commands = {
        "data": ["data", "validate", str(data_file)],
        "train": [
            "train",
            "--config",
            str(recipe),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset",
            str(data_file),
            "--max_steps",
            "2",
            "--max_length",
            "128",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--evaluate_test",
            "false",
            "--output_dir",
            str(tmp_path / "out"),
            "--adapter_root",
            str(tmp_path / "lora"),
        ],
        "eval": [
            "eval",
            "--adapter",
            str(adapter_dir),
            "--mode",
            "generate",
            "--mcq",
            str(mcq_file),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "4",
            "--no-cache",
            "--run-name",
            "w",
        ],
        "chat": ["chat", "--adapter", str(adapter_dir), "--prompt", "What is anemia?", "--max-new-tokens", "4"],
        "export": ["export", "--adapter", str(adapter_dir), "--out", str(tmp_path / "merged")],
    }
    results = _together(
        **{name: (_piped, [sys.executable, "-m", "medreason", *argv], tmp_path, env) for name, argv in commands.items()}
    )
    for name, (rc, err) in results.items():
        assert rc == 0, (name, err[-3000:])
        assert not _stray_warnings(err), (name, _stray_warnings(err))
        # issue 32: each run starts a fresh MLflow store, whose set-up MLflow announced in its own INFO lines
        assert not [line for line in err.splitlines() if " mlflow." in line], (name, err[-3000:])


def test_the_noise_filter_is_exact_and_leaves_other_warnings_alone():
    import warnings

    from medreason.compat import LIBRARY_NOISE, quiet_library_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_library_warnings():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("something the user should read", UserWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
    assert [str(w.message).split()[0] for w in seen] == ["something", "`is_gradient_checkpointing`"]
    assert all(noise.checked and noise.why for noise in LIBRARY_NOISE)


# --------------------------------------------------------------------------------------------- training, chat


def test_training_reports_step_total_loss_tokens_per_second_and_eta(tiny_model_dir, tmp_path):
    """The training log line matches every other long step: step/total, loss, tokens/s, ETA (a bar on a
    terminal, one line per logging step when piped), and transformers' raw dict printing is gone."""
    import re

    data_file = _sft_file(tmp_path / "sft.jsonl", 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), progress.DELAY_ENV: "0"}
    env.pop(progress.ENV, None)
    env.pop("TQDM_DISABLE", None)

    def argv(out):
        return [
            sys.executable,
            "-m",
            "medreason",
            "train",
            "--config",
            str(ROOT / "configs" / "smollm2-135m-cpu.yaml"),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset",
            str(data_file),
            "--max_steps",
            "4",
            "--logging_steps",
            "1",
            "--max_length",
            "128",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--save_strategy",
            "no",
            "--evaluate_test",
            "false",
            "--output_dir",
            str(tmp_path / out),
            "--adapter_root",
            str(tmp_path / f"lora-{out}"),
            "--per_device_train_batch_size",
            "2",
        ]

    out = _together(piped=(_piped, argv("piped"), tmp_path, env), tty=(_on_a_terminal, argv("tty"), tmp_path, env))
    rc, err = out["piped"]
    assert rc == 0, err[-3000:]
    steps = re.findall(r"step (\d)/4 \(\d+%\)  loss \d+\.\d{4}(.*)", err)
    assert [s for s, _ in steps] == ["1", "2", "3", "4"], err[-3000:]
    assert all("ETA" in rest for _, rest in steps) and any("tokens/s" in rest for _, rest in steps), steps
    assert re.search(r"eval at step 2/4 \(50%\): eval_loss \d+\.\d{4}", err), err[-3000:]
    assert "{'loss'" not in err and "\r" not in err  # no raw dicts, no bar when piped
    rc, screen = out["tty"]
    assert rc == 0, screen[-3000:]
    assert "train" in screen and "4/4" in screen and "step 4/4 (100%)" in screen, screen[-3000:]


def test_chat_questions_with_compare_shows_progress(adapter_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), progress.DELAY_ENV: "0", progress.ENV: "lines"}
    (tmp_path / "q.txt").write_text("".join(f"What causes condition {i}?\n" for i in range(10)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medreason",
            "chat",
            "--adapter",
            str(adapter_dir),
            "--compare",
            "--questions",
            "q.txt",
            "--out",
            "a.jsonl",
            "--max-new-tokens",
            "3",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "answer (base and adapter): 8/10 q (80%)" in proc.stderr
    assert "answer (base and adapter): 10/10 q (100%)" in proc.stderr
