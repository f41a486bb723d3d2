"""`medreason train` end to end, on the 2-layer random Llama of conftest (real SmolLM2 tokenizer).

What is checked: one seed gives one loss curve; the adapter folder (safetensors, tokenizer, model card,
medreason.json) loads with plain PEFT and is replaced atomically; metrics reach a real MLflow server over
HTTP; a crash marks the MLflow run FAILED (KILLED on Ctrl-C); a SIGKILLed run resumes to the end;
QLoRA (bitsandbytes 4-bit) on the CPU; DDP with torchrun over gloo; bad input fails in a second with one
line and exit code 2; every shipped recipe parses and documents its own command.

The runs are shortened (max_length 256, a few steps) so that the whole file takes a few minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

# MLflow 3 sends usage telemetry unless told not to (it also stays quiet under pytest, but only when it is
# imported while a test runs); the tests never touch the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "smollm2-135m-cpu.yaml"
LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
NO_EVAL_NO_SAVE = ("--eval_strategy", "no", "--save_strategy", "no")


def tiny_args(model_dir: Path, work: Path, *extra: str, steps: int = 4) -> list[str]:
    """The recipe on the tiny model, shortened, on the open-ended bundled corpus (12 rows per specialty, so 40 rows
    still leave a validation split; the recipe's own bundled-mcq has 8); later `extra` options override earlier ones."""
    return [
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(model_dir),
        "--dataset",
        "bundled",
        "--max_steps",
        str(steps),
        "--max_examples",
        "40",
        "--max_length",
        "256",
        "--eval_steps",
        "2",
        "--eval_on_start",
        "false",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--evaluate_test",
        "false",
        "--output_dir",
        str(work / "out"),
        "--adapter_root",
        str(work / "lora"),
        *extra,
    ]


def loss_curve(tracking_uri: str, run_id: str) -> list[tuple[int, float]]:
    import mlflow

    history = mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, "loss")
    return sorted((m.step, m.value) for m in history)


def run_status(tracking_uri: str, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(tracking_uri).get_run(run_id).info.status


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def leftovers(adapter_root: Path) -> list[str]:
    """Temporary or backup folders that an atomic save must not leave behind."""
    return sorted(p.name for p in adapter_root.iterdir() if p.name.startswith("."))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("medreason: error:")]


def offline_env(tracking_uri: str | None = None) -> dict[str, str]:
    """Environment for the subprocesses: offline, no telemetry, MLflow store of the test."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _mlflow_left_as_found():
    """medreason.tracking promises to leave MLflow as it found it: no active run, the same tracking URI, the
    same environment. Checked after every test here, through MLflow's public API only."""
    import mlflow

    uri_before, env_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    yield
    assert mlflow.active_run() is None
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    assert mlflow.get_tracking_uri() == uri_before


# --------------------------------------------------------------------------------------------- three runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Run A and run B with the same seed (B's adapter replaces A's in lora/), run C with another seed."""
    from medreason.train import train

    work = tmp_path_factory.mktemp("train-runs")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # MLflow's artifacts (./mlruns) land here, not in the repository
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        a = train(tiny_args(tiny_model_dir, work, "--output_dir", str(work / "out-a")))
        a_adapter = folder_digest(a.adapter_dir)
        b = train(tiny_args(tiny_model_dir, work, "--output_dir", str(work / "out-b")))
        c = train(
            tiny_args(
                tiny_model_dir,
                work,
                "--output_dir",
                str(work / "out-c"),
                "--seed",
                "7",
                "--adapter_root",
                str(work / "lora-c"),
            )
        )
    return SimpleNamespace(
        work=work, uri=uri, a=a, b=b, c=c, a_adapter=a_adapter, name=tiny_model_dir.name, model_dir=tiny_model_dir
    )


@pytest.mark.slow
def test_same_seed_same_loss_curve_other_seed_other_curve(runs):
    a, b, c = (loss_curve(runs.uri, r.mlflow_run_id) for r in (runs.a, runs.b, runs.c))
    assert [step for step, _ in a] == [1, 2, 3, 4]  # logging_steps 1, max_steps 4
    assert a == b
    assert a != c  # the seed matters: data order and adapter initialisation
    assert runs.a.global_step == runs.b.global_step == 4
    assert runs.a.metrics["train_loss"] == runs.b.metrics["train_loss"]
    assert "eval_loss" in runs.a.metrics  # eval_steps 2 and the final evaluation ran
    for r in (runs.a, runs.b, runs.c):
        assert run_status(runs.uri, r.mlflow_run_id) == "FINISHED"
    import mlflow

    params = mlflow.MlflowClient(runs.uri).get_run(runs.a.mlflow_run_id).data.params
    assert params["lora_r"] == "16" and params["seed"] == "42"
    # the trainer's MLflow callback logs its own params too: none of them may be refused
    assert params["lr_scheduler_type"] == "cosine"
    assert "vocab_size" in params and "logging_steps" in params


@pytest.mark.slow
def test_adapter_folder_is_complete_and_loads_with_plain_peft(runs):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root = runs.work / "lora"
    final = root / runs.name
    assert runs.b.adapter_dir == final
    names = {p.name for p in final.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "medreason.json",
    } <= names
    assert not [n for n in names if n.endswith(".bin")]
    assert [p.name for p in root.iterdir()] == [runs.name]  # no .<name>.tmp-* nor .<name>.old left
    card = (final / "README.md").read_text()
    assert "Not for clinical use" in card and f"base_model: {runs.model_dir}" in card
    meta = json.loads((final / "medreason.json").read_text())
    assert meta["base_model"] == str(runs.model_dir) and meta["template"] == "think"
    assert meta["config"]["output_dir"].endswith("out-b")  # run B replaced run A's adapter
    assert meta["vocab_size"] == 49152
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 16 and set(config["target_modules"]) == LORA_MODULES

    # same seed, same weights; the adapter is the model at the last step (= the last checkpoint)
    saved = load_file(final / "adapter_model.safetensors")
    assert folder_digest(final)["adapter_model.safetensors"] == runs.a_adapter["adapter_model.safetensors"]
    last = load_file(runs.work / "out-b" / "checkpoint-4" / "adapter_model.safetensors")
    assert saved.keys() == last.keys() and all(torch.equal(saved[k], last[k]) for k in saved)
    other = load_file(runs.c.adapter_dir / "adapter_model.safetensors")
    assert any(not torch.equal(saved[k], other[k]) for k in saved)

    base = AutoModelForCausalLM.from_pretrained(runs.model_dir)
    model = PeftModel.from_pretrained(base, final)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) == 2 * 2 * len(LORA_MODULES)  # A and B, 2 layers, 7 modules
    b_weights = [v for k, v in loaded.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in b_weights)  # trained: B starts at zero
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 49152) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_failed_save_keeps_previous_adapter(runs, monkeypatch):
    """Retraining that fails while writing the adapter leaves the previous adapter untouched."""
    from peft import PeftModel

    from medreason.train import train

    monkeypatch.chdir(runs.work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs.uri)
    root = runs.work / "lora"
    before = folder_digest(root / runs.name)
    original = PeftModel.save_pretrained

    def half_then_fail(self, save_directory, *a, **kw):
        original(self, save_directory, *a, **kw)
        if Path(save_directory).name.startswith("."):  # the final save, not a checkpoint
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", half_then_fail)
    out = runs.work / "out-d"
    with pytest.raises(OSError, match="No space left"):
        train(tiny_args(runs.model_dir, runs.work, "--output_dir", str(out), *NO_EVAL_NO_SAVE, steps=1))
    assert folder_digest(root / runs.name) == before
    assert leftovers(root) == []
    assert run_status(runs.uri, (out / "mlflow_run_id").read_text().strip()) == "FAILED"


def test_failed_swap_puts_previous_adapter_back(in_tmp, monkeypatch, tiny_model_dir):
    """A failure between moving the old adapter aside and moving the new one in restores the old one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import medreason.io as mio
    from medreason.adapter import save_adapter

    name = tiny_model_dir.name
    root = in_tmp / "lora"
    final = root / name
    final.mkdir(parents=True)
    (final / "adapter_model.safetensors").write_bytes(b"the previous adapter")
    (final / "adapter_config.json").write_text('{"r": 16}')
    before = folder_digest(final)

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"])
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    meta = {"base_model": str(tiny_model_dir), "metrics": {"train_loss": 1.0}}
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(src).name.startswith(f".{name}.tmp-"):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(mio.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        save_adapter(model, tokenizer, final, meta)
    monkeypatch.undo()
    assert any(src == name and dst.startswith(f".{name}.old-") for src, dst in calls)  # moved aside first
    assert folder_digest(final) == before
    assert leftovers(root) == []

    # and a save that works replaces it, leaving nothing beside it
    assert save_adapter(model, tokenizer, final, meta) == final
    assert (final / "adapter_model.safetensors").read_bytes() != b"the previous adapter"
    assert (final / "medreason.json").is_file() and leftovers(root) == []
    plain = in_tmp / "plain"
    plain.mkdir()
    assert stat.S_IMODE(final.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkdtemp's 0700


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


# --------------------------------------------------------------------------------------------- QLoRA, DDP


@pytest.mark.slow
def test_qlora_4bit_on_cpu(in_tmp, monkeypatch, tiny_model_dir):
    import bitsandbytes as bnb

    import medreason.models
    from medreason.train import train

    loaded = []
    original = medreason.models.load_model_and_tokenizer

    def spy(*a, **kw):
        model, tokenizer = original(*a, **kw)
        loaded.append(model)
        return model, tokenizer

    monkeypatch.setattr(medreason.models, "load_model_and_tokenizer", spy)
    result = train(
        tiny_args(
            tiny_model_dir,
            in_tmp,
            "--load_in_4bit",
            "true",
            "--use_bnb_nested_quant",
            "true",
            "--bnb_4bit_quant_type",
            "nf4",
            *NO_EVAL_NO_SAVE,
            steps=2,
        )
    )
    model = loaded[0]
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * len(LORA_MODULES)  # every linear layer of both blocks is 4-bit
    q = model.config.quantization_config
    q = q.to_dict() if hasattr(q, "to_dict") else q
    assert q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_use_double_quant"]
    assert result.global_step == 2
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    meta = json.loads((result.adapter_dir / "medreason.json").read_text())
    assert meta["config"]["load_in_4bit"] is True and meta["config"]["bnb_4bit_quant_type"] == "nf4"


@pytest.mark.slow
def test_torchrun_two_processes_ddp_over_gloo(in_tmp, tiny_model_dir, check_adapter_equals_gathered):
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    out, lora = in_tmp / "out", in_tmp / "lora"
    # every rank dumps the adapter tensors it holds at the final save (medreason.distributed)
    env = offline_env(f"sqlite:///{in_tmp / 'mlflow.db'}") | {"MEDREASON_DUMP_GATHERED": str(in_tmp / "gathered")}
    cmd = [
        *launcher,
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "medreason",
        "train",
        *tiny_args(tiny_model_dir, in_tmp, "--eval_strategy", "no", "--per_device_train_batch_size", "2", steps=2),
    ]
    proc = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=480)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert output.count("medreason: data: bundled corpus; train") == 2  # both ranks ran
    assert output.count("medreason: lm_head: dense") == 2  # both ranks chose the same LM head
    assert len(re.findall(r"^adapter saved to", proc.stdout, re.M)) == 1  # only rank 0 saves
    assert [p.name for p in lora.iterdir()] == [tiny_model_dir.name]
    # the saved adapter = rank 0's trained tensors = rank 1's replica, and loads back with PEFT
    check_adapter_equals_gathered(lora / tiny_model_dir.name, in_tmp / "gathered", tiny_model_dir, ranks=2)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # 2 rows per device: with 2 processes one step takes 4 rows of the training split, so an epoch is
    # ceil(rows / 4) steps (alone it would be ceil(rows / 2))
    rows = json.loads((lora / tiny_model_dir.name / "medreason.json").read_text())["data"]["rows"]["train"]
    assert state["log_history"][0]["epoch"] == pytest.approx(1 / -(-rows // 4))


# --------------------------------------------------------------------------------------------- bad input


def _bad_yaml(tmp: Path) -> str:
    path = tmp / "typo.yaml"
    path.write_text(RECIPE.read_text() + "\nlora_rankk: 8\n")
    return str(path)


def _bad_rows(tmp: Path) -> str:
    path = tmp / "bad.jsonl"
    rows = [
        {"Question": "", "Complex_CoT": "reasoning " * 5, "Response": "answer"},
        {"Question": "What is the first-line treatment of X?", "Response": "answer"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    return str(path)


BAD_INPUT = {
    "lora_r 0": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--lora_r", "0"],
        "lora_r must be a positive integer",
    ),
    "negative learning rate": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--learning_rate", "-0.0001"],
        "learning_rate must be positive",
    ),
    "max_length beyond context": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--max_length", "100000"],
        "max_length 100000 is beyond the context",
    ),
    "unknown target module": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--lora_target_modules", "foo_proj"],
        "no module named 'foo_proj'",
    ),
    "unknown target among several": (
        lambda t, m: [
            "--config",
            str(RECIPE),
            "--model_name_or_path",
            m,
            "--lora_target_modules",
            "q_proj",
            "foo_proj",
        ],
        "no module named 'foo_proj'",
    ),
    "unknown yaml key": (
        lambda t, m: ["--config", _bad_yaml(t), "--model_name_or_path", m],
        "unknown config key 'lora_rankk'",
    ),
    "unknown option": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--lora_rankk", "8"],
        "unknown option '--lora_rankk'",
    ),
    "missing config": (lambda t, m: ["--config", str(t / "nope.yaml")], "does not exist"),
    "no config": (lambda t, m: ["--model_name_or_path", m], "needs a recipe"),
    "unknown model offline": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", "someone/unknown-model"],
        "'someone/unknown-model' cannot be loaded",
    ),
    "all rows invalid": (
        lambda t, m: ["--config", str(RECIPE), "--model_name_or_path", m, "--dataset", _bad_rows(t)],
        'row 1: field "Question" is empty (and 2 more',
    ),
    "all rows invalid, skipped": (
        lambda t, m: [
            "--config",
            str(RECIPE),
            "--model_name_or_path",
            m,
            "--dataset",
            _bad_rows(t),
            "--skip_invalid",
            "true",
        ],
        "no valid rows",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, in_tmp, capsys, monkeypatch, tiny_model_dir):
    import medreason.models
    from medreason.cli import main

    def no_model(*a, **kw):  # every one of these must fail before the weights load
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(medreason.models, "load_model_and_tokenizer", no_model)
    make_argv, expected = BAD_INPUT[case]
    started = time.monotonic()
    assert main(["train", *make_argv(in_tmp, str(tiny_model_dir))]) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert time.monotonic() - started < 30
    assert not (in_tmp / "results" / "mlflow.db").exists()  # no MLflow run for input that cannot train


def test_bad_value_is_one_line_and_exit_2(in_tmp, capsys, tiny_model_dir):
    from medreason.cli import main

    assert (
        main(["train", "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--resume", "maybe"]) == 2
    )
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_bool_options_parse_as_documented():
    from medreason.config import parse_config

    args, _, _ = parse_config(["--config", str(RECIPE), "--resume"])
    assert args.resume is True and args.evaluate_test is True
    args, _, model_args = parse_config(
        ["--config", str(RECIPE), "--resume", "true", "--evaluate_test", "false", "--load_in_4bit", "true"]
    )
    assert args.resume is True and args.evaluate_test is False and model_args.load_in_4bit is True


def test_single_target_module_becomes_a_list(tiny_model_dir):
    """`--lora_target_modules q_proj` arrives from the parser as a string, which PEFT would take as a regex
    over full module paths (matching nothing): the checks turn it into a list of one name."""
    from medreason.config import parse_config
    from medreason.run import check_hyperparameters, lora_targets, peft_config

    args, sft, model_args = parse_config(
        ["--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--lora_target_modules", "q_proj"]
    )
    check_hyperparameters(args, sft, model_args)
    assert lora_targets(model_args) == ["q_proj"]
    assert peft_config(model_args).target_modules == {"q_proj"}


# --------------------------------------------------------------------------------------------- shipped recipes


RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def _header_commands(path: Path) -> list[str]:
    """The commands in the recipe's leading comment block."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if re.search(r"medreason train|accelerate launch|torchrun", text):
            commands.append(text)
    return commands


def _check_documented_command(command: str):
    """The `train` part of a documented command parses, and any accelerate config it names exists."""
    from medreason.config import parse_config

    words = shlex.split(command.split(" #")[0])
    if "--config_file" in words:
        assert (ROOT / words[words.index("--config_file") + 1]).is_file(), command
    assert "train" in words, command
    parse_config(words[words.index("train") + 1 :])  # overrides included, as written


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_parses_and_documents_its_command(recipe, monkeypatch):
    from medreason.config import parse_config

    monkeypatch.chdir(ROOT)  # the documented commands use paths relative to the repository
    args, sft, model_args = parse_config(["--config", str(recipe)])
    assert model_args.model_name_or_path and model_args.use_peft
    commands = _header_commands(recipe)
    assert any(f"--config configs/{recipe.name}" in c for c in commands), (
        f"{recipe.name}: the first comment lines must show the command that runs it"
    )
    for command in commands:
        _check_documented_command(command)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_config_is_yaml_with_distributed_type(config, monkeypatch):
    data = yaml.safe_load(config.read_text())
    assert isinstance(data, dict) and data.get("distributed_type")
    monkeypatch.chdir(ROOT)
    commands = [c for c in _header_commands(config) if f"--config_file configs/accelerate/{config.name}" in c]
    assert commands, f"{config.name}: the first comment lines must show the accelerate launch command"
    for command in commands:
        _check_documented_command(command)


# --------------------------------------------------------------------------------------------- CPU speed paths


@pytest.mark.parametrize(
    "argv, precision, dtype",
    [
        ([], "bf16", "bfloat16"),  # adapter under bf16: frozen base weights in bf16
        (["--dtype", "float32"], "bf16", "float32"),  # an explicit dtype is kept
        (["--use_peft", "false"], "bf16", "float32"),  # full fine-tuning keeps fp32 master weights
        ([], "fp32", "float32"),
    ],
)
def test_precision_reaches_the_accelerator_and_the_weights(argv, precision, dtype):
    """Regression: bf16 set after parsing never reached TrainingArguments.mixed_precision, and TRL's default
    dtype kept fp32 weights, so a 'bf16' run silently trained in fp32 at a third of the speed."""
    from medreason.config import parse_config

    args, sft, model_args = parse_config(["--config", str(RECIPE), "--precision", precision, *argv])
    assert sft.bf16 is (precision == "bf16")
    assert sft.mixed_precision == ("bf16" if precision == "bf16" else "no")
    assert model_args.dtype == dtype


@pytest.mark.parametrize("loss_outputs", ["log_probs", "entropy", "is_top1"])
def test_dense_lm_head_matches_trls_fused_head(loss_outputs, tiny_model_dir):
    """The dense head gives TRL's per-token log-probabilities, entropy and top-1 hits (zero where the label is
    -100), the same loss, and the same gradients."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from medreason.compat import use_dense_lm_head

    def model(dense: bool):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
        peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        if dense:
            use_dense_lm_head(peft)
        assert getattr(peft.get_base_model().forward, "dense_lm_head", False) is dense
        return peft

    torch.manual_seed(1)
    input_ids = torch.randint(0, 49152, (2, 12))
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt
    labels[1, 9:] = -100  # padding
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    results = []
    for dense in (False, True):
        m = model(dense)
        out = m(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        field = getattr(out, loss_outputs)
        out.loss.backward()
        grads = [p.grad.clone() for p in m.parameters() if p.requires_grad]
        results.append((out.loss.detach(), field.detach().float(), out.label_mask, grads))
    (loss_f, field_f, mask_f, grads_f), (loss_d, field_d, mask_d, grads_d) = results
    assert torch.equal(mask_f, mask_d)
    torch.testing.assert_close(loss_d, loss_f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(field_d, field_f, rtol=1e-4, atol=1e-4)
    assert (field_d[~mask_d] == 0).all()
    for g_d, g_f in zip(grads_d, grads_f):
        torch.testing.assert_close(g_d, g_f, rtol=1e-4, atol=1e-5)


def test_dense_lm_head_leaves_generation_alone(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from medreason.compat import use_dense_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model.generate(ids, max_new_tokens=5, do_sample=False)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    use_dense_lm_head(model)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), before)
