"""What the training tests share: the tiny recipe's arguments, MLflow readers, the fault-test helpers, and the
fixture that checks MLflow is left as found (import it into a test module to apply it there)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

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


def benchmark_module(name: str):
    """benchmarks/<name>.py, imported from its file (benchmarks/ is not a package; its scripts import `common`)."""
    import importlib.util
    import sys

    folder = ROOT / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"{name}_bench", folder / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
