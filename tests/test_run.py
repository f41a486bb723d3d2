"""What every training run shares (medreason.run): the MLflow run (metrics reach a real tracking server over
HTTP; a crash marks it FAILED, Ctrl-C KILLED), kill and resume (a SIGKILLed run resumes to the end), and the
faults a fair but hostile user meets (issue 11): concurrent runs, SIGTERM, stale locks, changed LoRA settings on
--resume, resuming a finished run, examples longer than max_length, and the paths an adapter records.

Everything trains the 2-layer tiny model of conftest for a few steps; the subprocess runs are the real CLI.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    NO_EVAL_NO_SAVE,
    _mlflow_left_as_found,  # noqa: F401  (autouse: MLflow is left as found after each test)
    free_port,
    leftovers,
    loss_curve,
    offline_env,
    run_status,
    tiny_args,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "smollm2-135m-cpu.yaml"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tiny(model_dir, work: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(model_dir),
        "--max_steps",
        str(steps),
        "--max_examples",
        "24",
        "--max_length",
        "512",
        "--eval_strategy",
        "no",
        "--evaluate_test",
        "false",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--output_dir",
        str(work / "out"),
        "--adapter_root",
        str(work / "lora"),
        *extra,
    ]


def env(uri: str) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }


def status(uri: str, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(uri).get_run(run_id).info.status


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("medreason: error:")]


# --------------------------------------------------------------------------------------------- a long run


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, tiny_model_dir):
    """`medreason train` in a subprocess, far from done, with its first checkpoint written."""
    work = tmp_path_factory.mktemp("long-run")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "medreason", "train", *tiny(tiny_model_dir, work, steps=5000)],
        cwd=work,
        env=env(uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (work / "out" / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.5)
    yield proc, work, uri
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_second_run_on_the_same_folders_is_refused(long_run, tiny_model_dir, capsys, monkeypatch, tmp_path):
    """Two runs on one output_dir or one adapter folder used to share checkpoints and both report success."""
    from medreason.cli import main

    proc, work, uri = long_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # the same output_dir (its checkpoints exist: --resume, which would otherwise continue them)
    assert main(["train", *tiny(tiny_model_dir, work, "--adapter_root", str(tmp_path / "other"), "--resume")]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"PID {proc.pid}" in line and "--output_dir" in line
    # another output_dir, the same adapter folder
    assert main(["train", *tiny(tiny_model_dir, work, "--output_dir", str(tmp_path / "out"))]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"PID {proc.pid}" in line and "adapter folder" in line
    assert not (tmp_path / "out").exists()  # the refused run left nothing behind
    assert proc.poll() is None  # and the first run trains on


def test_sigterm_is_one_line_killed_run_and_resumable(long_run, tiny_model_dir, monkeypatch, capsys):
    """SIGTERM used to exit 143 with no word and leave the MLflow run RUNNING forever."""
    from medreason.cli import main

    proc, work, uri = long_run
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "medreason: stopped by SIGTERM (checkpoints kept: continue with --resume)"
    assert "Traceback" not in err
    run_id = (work / "out" / "mlflow_run_id").read_text().strip()
    assert status(uri, run_id) == "KILLED"
    assert not (work / "out" / ".medreason.lock").exists()
    assert not (work / "lora" / f".{tiny_model_dir.name}.lock").exists()
    # resumable: continue to a near step count and finish the same MLflow run
    done = max(int(p.name.split("-")[1]) for p in (work / "out").glob("checkpoint-*")) + 2
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["train", *tiny(tiny_model_dir, work, "--resume", steps=done)]) == 0
    assert f"({done} steps;" in capsys.readouterr().out
    assert status(uri, run_id) == "FINISHED"


# --------------------------------------------------------------------------------------------- locks, resume


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, tiny_model_dir, monkeypatch, caplog):
    from medreason.train import train

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".medreason.lock").write_text(f"{dead.pid} {os.uname().nodename}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with caplog.at_level("INFO"):
        result = train(tiny(tiny_model_dir, tmp_path, "--save_strategy", "no", steps=1))
    assert result.global_step == 1
    assert any("stale lock" in r.getMessage() and str(dead.pid) in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "out" / ".medreason.lock").exists()


def test_lock_refuses_a_live_holder_and_cleans_up(tmp_path):
    from medreason.errors import UserError
    from medreason.locks import run_lock

    lock = tmp_path / "new" / "deeper" / ".x.lock"
    with run_lock(lock, "the folder"):
        holder = subprocess.run(
            [
                sys.executable,
                "-c",
                f"""
from medreason.locks import run_lock
from medreason.errors import UserError
try:
    with run_lock({str(lock)!r}, "the folder"):
        print("acquired")
except UserError as e:
    print(e)
""",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"PID {os.getpid()}" in holder and "in use" in holder
        with pytest.raises(UserError):  # the same process twice is refused too (flock is per open file)
            with run_lock(lock, "the folder"):
                pass
    assert not (tmp_path / "new").exists()  # folders made only for the lock are removed again


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A 2-step run whose last checkpoint is its final step (r=16, the recipe's)."""
    from medreason.train import train

    work = tmp_path_factory.mktemp("finished-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        result = train(tiny(tiny_model_dir, work))
    assert (work / "out" / "checkpoint-2" / "adapter_config.json").is_file()
    return work, result


def test_resume_with_another_lora_rank_names_the_setting(finished_run, tiny_model_dir, capsys, monkeypatch):
    """It used to print 29 lines of 'size mismatch' after the model had loaded."""
    from medreason.cli import main

    work, _ = finished_run
    monkeypatch.chdir(work)
    assert main(["train", *tiny(tiny_model_dir, work, "--resume", "--lora_r", "8")]) == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert "lora_r 16" in line and "lora_r" in line and "8" in line
    assert len(err.strip().splitlines()) == 1


def test_resume_from_the_final_checkpoint_trains_no_further(finished_run, tiny_model_dir, monkeypatch):
    """Resuming a run killed after its last checkpoint used to train one step past max_steps."""
    import shutil

    from medreason.adapter import read_adapter
    from medreason.train import train

    work, first = finished_run
    shutil.rmtree(first.adapter_dir)  # as if killed while saving the adapter
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    again = train(tiny(tiny_model_dir, work, "--resume"))
    assert again.global_step == 2
    assert read_adapter(again.adapter_dir)["base_model"] == str(tiny_model_dir)
    assert not (work / "out" / "checkpoint-3").exists()


# --------------------------------------------------------------------------------------------- over-long examples


def test_over_long_counts_match_what_trl_drops(tiny_model_dir):
    """fit_max_length predicts exactly which examples TRL's SFTTrainer drops (its prompt fills max_length)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from medreason.data import load_splits
    from medreason.tokens import fit_max_length

    ds = load_splits("bundled", max_examples=40)["train"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = sorted(
        len(
            tok.apply_chat_template(ex["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True)[
                "input_ids"
            ]
        )
        for ex in ds
    )
    max_length = prompts[len(prompts) // 2]  # about half the prompts fill it
    fit = fit_max_length(ds, tok, max_length)
    assert 0 < fit["dropped"] < len(ds) and fit["kept"] + fit["dropped"] == len(ds)
    args = SFTConfig(output_dir="/tmp/unused", max_length=max_length, report_to=[], use_cpu=True, bf16=False)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args, train_dataset=ds, processing_class=tok
    )
    assert len(trainer.train_dataset) == fit["kept"]


def _long_rows(path: Path, n: int, n_long: int) -> str:
    """n rows of the bundled corpus; the first n_long with their question repeated 8 times (its own words, so
    that de-duplication keeps them apart)."""
    corpus = (ROOT / "medreason" / "resources" / "corpus.jsonl").read_text().splitlines()[:n]
    rows = [json.loads(line) for line in corpus]
    for row in rows[:n_long]:
        row["Question"] = " ".join([row["Question"]] * 8)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_over_long_examples_are_counted_logged_and_tracked(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """4 of 30 prompts beyond max_length used to vanish silently (log said 'train 30', TRL trained on fewer)."""
    import mlflow

    from medreason.train import train

    data = _long_rows(tmp_path / "rows.jsonl", 30, 4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with caplog.at_level("INFO"):
        result = train(
            tiny(
                tiny_model_dir,
                tmp_path,
                "--dataset",
                data,
                "--max_length",
                "300",
                "--save_strategy",
                "no",
                "--max_examples",
                "100",
                steps=1,
            )
        )
    assert any("4 examples dropped" in r.getMessage() and "max_length" in r.getMessage() for r in caplog.records)
    params = mlflow.MlflowClient(uri).get_run(result.mlflow_run_id).data.params
    dropped = sum(int(v) for k, v in params.items() if k.startswith("data_dropped_over_max_length_"))
    trained = sum(int(v) for k, v in params.items() if k.startswith("data_rows_"))
    assert dropped == 4 and trained == 26


def test_data_stats_counts_what_training_drops(tmp_path):
    """`data stats` used to say 'truncated: 10' without saying that those rows would be dropped."""
    from medreason.data import stats

    s = stats(_long_rows(tmp_path / "rows.jsonl", 30, 4), max_length=300)
    assert sum(s["dropped_at_max_length"].values()) == 4
    assert s["truncated_at_max_length"] >= 4


def test_every_prompt_too_long_is_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """It used to die with `IndexError: Invalid key: 0 is out of bounds for size 0`."""
    from medreason.cli import main

    data = _long_rows(tmp_path / "rows.jsonl", 12, 12)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "train",
                *tiny(tiny_model_dir, tmp_path, "--dataset", data, "--max_length", "300", "--max_examples", "100"),
            ]
        )
        == 2
    )
    (line,) = error_lines(capsys.readouterr().err)
    assert "max_length 300" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "lora").exists()


# --------------------------------------------------------------------------------------------- paths


def test_adapter_metadata_has_absolute_data_path_and_hash(tmp_path, tiny_model_dir, monkeypatch):
    """An adapter trained on `in/x.jsonl` could not be evaluated from another directory."""
    from medreason.adapter import read_adapter
    from medreason.data import load_splits
    from medreason.train import train

    (tmp_path / "in").mkdir()
    _long_rows(tmp_path / "in" / "x.jsonl", 30, 0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = train(
        tiny(
            tiny_model_dir,
            tmp_path,
            "--dataset",
            "in/x.jsonl",
            "--save_strategy",
            "no",
            "--max_examples",
            "100",
            steps=1,
        )
    )
    data = read_adapter(result.adapter_dir)["data"]
    assert Path(data["path"]).is_absolute() and len(data["sha256"]) == 64
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # the recorded dataset rebuilds the same split from another working directory
    assert len(load_splits(data["dataset"], **data["args"])["train"]) == data["rows"]["train"]


# --------------------------------------------------------------------------------------------- export


def test_export_writes_once_then_needs_force(finished_run, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """`export` used to overwrite an existing model folder without a word; --force replaces it atomically."""
    from medreason.cli import main

    work, first = finished_run
    adapter = tmp_path / "adapter"
    import shutil

    shutil.copytree(work / "out" / "checkpoint-2", adapter)  # any PEFT folder of the tiny model
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter), "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["export", "--adapter", str(adapter), "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "--force" in error_lines(capsys.readouterr().err)[0]
    assert (
        main(["export", "--adapter", str(adapter), "--model", str(tiny_model_dir), "--out", str(out), "--force"]) == 0
    )
    assert (out / "model.safetensors").stat().st_mtime_ns != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_eval_table_stays_aligned_at_large_perplexity():
    """A perplexity >= 1e4 used to run into the test-loss column."""
    from medreason.report import table

    def variant(loss):
        import math

        return {
            "accuracy": 0.25,
            "test_loss": loss,
            "test_perplexity": math.exp(loss),
            "tasks": {"medreason_mcq": {"acc": 0.25, "acc_stderr": 0.04}},
            "accuracy_by_group": {"Cardiology": {"accuracy": 0.25}},
        }

    results = {
        "mode": "loglik",
        "variants": {"base": variant(2.5), "adapter": variant(25.0)},
        "settings": {"chat": False},
        "chance": 0.25,
        "n_mcq": 40,
        "benchmark": "bundled",
        "groups": {"Cardiology": 4},
    }
    head, base, adapter = table(results).splitlines()[:3]
    for row in (base, adapter):
        cells = row.split()
        assert len(cells) == len(base.split()), row  # every number its own column
        ppl = cells[3]
        assert row.index(ppl) + len(ppl) == head.index("ppl") + len("ppl"), (head, row)  # right-aligned under it
    assert float(adapter.split()[3]) == pytest.approx(__import__("math").exp(25.0), rel=1e-5)


# --------------------------------------------------------------------------------------------- usage


def test_train_help_lists_config_under_its_own_usage(capsys):
    from medreason.cli import main

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: medreason train --config FILE")
    assert "\n  --config FILE" in out and "--lora_r LORA_R, --lora-r LORA_R" in out


def test_every_option_of_every_subcommand_takes_both_spellings():
    """issue 10 item 8: `chat --max_new_tokens` used to be refused while `train --max_steps` worked."""
    import argparse

    from medreason.cli import build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    checked = 0
    for p in parsers(build_parser()):
        for action in p._actions:
            for name in action.option_strings:
                if name.startswith("--") and ("_" in name or "-" in name[2:]):
                    other = "--" + (name[2:].replace("_", "-") if "_" in name else name[2:].replace("-", "_"))
                    assert other in action.option_strings, (p.prog, name)
                    checked += 1
    assert checked >= 20
    args = build_parser().parse_args(["chat", "--max_new_tokens", "7", "--repetition-penalty", "1.2"])
    assert (args.max_new_tokens, args.repetition_penalty) == (7, 1.2)


# --------------------------------------------------------------------------------------------- MLflow


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free local port, SQLite backend, proxied artifacts; stopped afterwards."""
    port = free_port()
    log_path = tmp_path / "mlflow-server.log"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--artifacts-destination",
        str(tmp_path / "art"),
    ]
    # without job execution: no job runner and huey consumer processes, which only cost CPU here
    env = {**offline_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health in 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)  # the server and its uvicorn worker: the group this test started
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass


def rest(url: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_metrics_params_and_adapter_reach_a_tracking_server(mlflow_server, in_tmp, monkeypatch, tiny_model_dir):
    from medreason.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = train(tiny_args(tiny_model_dir, in_tmp))
    run_id = result.mlflow_run_id

    history = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="loss")["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2, 3, 4]  # one point per logging step
    assert all(m["value"] > 0 for m in history)
    run = rest(mlflow_server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["lora_r"] == "16" and params["max_steps"] == "4"
    assert params["lr_scheduler_type"] == "cosine"
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"loss", "eval_loss", "final_train_loss"} <= metrics
    files = {f["path"] for f in rest(mlflow_server, "artifacts/list", run_id=run_id, path="adapter").get("files", [])}
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/README.md",
        "adapter/medreason.json",
    } <= files
    root = {f["path"] for f in rest(mlflow_server, "artifacts/list", run_id=run_id).get("files", [])}
    assert "resolved_config.json" in root
    assert not (in_tmp / "mlruns").exists() and not (in_tmp / "results" / "mlflow.db").exists()  # all on the server


@pytest.mark.parametrize(
    "error, status, code",
    [
        (RuntimeError("simulated failure in the training loop"), "FAILED", 1),
        (KeyboardInterrupt(), "KILLED", 130),
    ],
    ids=["error", "ctrl-c"],
)
def test_crash_during_training_ends_the_mlflow_run(error, status, code, in_tmp, monkeypatch, capsys, tiny_model_dir):
    import trl

    from medreason.cli import main

    steps = []
    original = trl.SFTTrainer.training_step

    def crash_on_second_step(self, *a, **kw):
        steps.append(1)
        if len(steps) == 2:
            raise error
        return original(self, *a, **kw)

    monkeypatch.setattr(trl.SFTTrainer, "training_step", crash_on_second_step)
    assert main(["train", *tiny_args(tiny_model_dir, in_tmp, *NO_EVAL_NO_SAVE)]) == code
    err = capsys.readouterr().err
    assert ("simulated failure" in err) if code == 1 else ("interrupted" in err)
    run_id = (in_tmp / "out" / "mlflow_run_id").read_text().strip()
    uri = f"sqlite:///{in_tmp / 'results' / 'mlflow.db'}"
    assert run_status(uri, run_id) == status  # not left RUNNING
    assert [step for step, _ in loss_curve(uri, run_id)] == [1]  # the step before the crash was logged
    assert not (in_tmp / "lora").exists()


# --------------------------------------------------------------------------------------------- kill and resume


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_sigkill_then_resume_finishes_the_run(in_tmp, capsys, caplog, monkeypatch, tiny_model_dir):
    from medreason.cli import main

    out, lora = in_tmp / "out", in_tmp / "lora"
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    args = tiny_args(tiny_model_dir, in_tmp, "--eval_strategy", "no", steps=6)
    env = offline_env(uri)
    log_path = in_tmp / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medreason", "train", *args],
            cwd=in_tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while not any(_parses(p) for p in out.glob("checkpoint-*/trainer_state.json")):
            if proc.poll() is not None:
                pytest.fail(
                    f"training ended (exit {proc.returncode}) before a checkpoint was seen:\n"
                    f"{log_path.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint after 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (lora / tiny_model_dir.name).exists()  # no adapter from a run that did not finish
    done = sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/trainer_state.json"))
    assert done and done[-1] < 6
    # as if the kill had landed while the next checkpoint was being written: resume must skip it
    partial = out / f"checkpoint-{done[-1] + 2}"
    partial.mkdir(exist_ok=True)
    (partial / "adapter_config.json").write_text("{")
    (partial / "trainer_state.json").unlink(missing_ok=True)
    run_id = (out / "mlflow_run_id").read_text().strip()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(logging.getLogger("mlflow"), "propagate", True)  # so that caplog sees its errors
    capsys.readouterr()
    assert main(["train", *args]) == 2  # without --resume: refuse to mix two runs in one folder
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "already holds checkpoints" in err and "--resume" in err
    assert "Traceback" not in err

    assert main(["train", *args, "--resume", "true"]) == 0
    assert "Failed to log run data" not in caplog.text  # the reopened run accepts the callback's params
    printed = capsys.readouterr().out
    assert re.search(r"adapter saved to .*\(6 steps", printed), printed
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert (lora / tiny_model_dir.name / "adapter_model.safetensors").is_file()
    assert leftovers(lora) == []
    assert (out / "mlflow_run_id").read_text().strip() == run_id  # the same MLflow run, reopened
    assert run_status(uri, run_id) == "FINISHED"
    steps = [step for step, _ in loss_curve(uri, run_id)]
    assert {done[-1] + 1, 6} <= set(steps) <= set(range(1, 7))


# --------------------------------------------------------------------------------------------- resume (issue 32)


def test_resume_skips_a_damaged_last_checkpoint_and_names_it(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """A truncated last checkpoint stopped --resume with a library error naming no file, although an older good
    checkpoint was there: now the newest checkpoint that loads is taken, and the skipped one is named."""
    import shutil

    from medreason.adapter import check_safetensors
    from medreason.cli import main
    from medreason.train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = tiny(tiny_model_dir, tmp_path, steps=4)
    first = train(args)
    damaged = tmp_path / "out" / "checkpoint-4" / "adapter_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:200])  # a copy cut short
    shutil.rmtree(first.adapter_dir)  # as if the run had stopped before saving its adapter
    with caplog.at_level(logging.WARNING, logger="medreason"):
        assert main(["train", *args, "--resume"]) == 0
    assert "skipping" in caplog.text and "checkpoint-4" in caplog.text and "adapter_model.safetensors" in caplog.text
    check_safetensors(damaged)  # retrained from checkpoint-2 and saved whole again
    assert json.loads((damaged.parent / "trainer_state.json").read_text())["global_step"] == 4
    assert (first.adapter_dir / "adapter_model.safetensors").is_file()


def test_resume_with_no_loadable_checkpoint_is_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from medreason.cli import main

    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    (checkpoint / "optimizer.pt").write_bytes(b"PK\x03\x04 cut short")
    assert main(["train", *tiny(tiny_model_dir, tmp_path), "--resume"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "no checkpoint" in line and "optimizer.pt" in line, line


def test_resume_finds_its_mlflow_store_from_another_folder(tmp_path, tiny_model_dir, monkeypatch):
    """results/mlflow.db is relative to the working directory: --resume from another folder used to create an
    empty store there and fail (exit 1). The store is recorded beside the checkpoints."""
    from medreason.cli import main

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(project)
    assert main(["train", *tiny(tiny_model_dir, project, steps=2)]) == 0
    store = f"sqlite:///{project / 'results' / 'mlflow.db'}"
    run_id = (project / "out" / "mlflow_run_id").read_text().strip()
    monkeypatch.chdir(elsewhere)
    assert main(["train", *tiny(tiny_model_dir, project, steps=4), "--resume"]) == 0
    assert not (elsewhere / "results").exists()  # no empty store made here
    assert (project / "out" / "mlflow_run_id").read_text().strip() == run_id
    assert run_status(store, run_id) == "FINISHED"
    assert max(step for step, _ in loss_curve(store, run_id)) == 4
