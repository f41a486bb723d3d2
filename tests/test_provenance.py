"""Issue 10's guarantees: a run records what it really used (data and model source, sha256 or revision, rows per
split) in medreason.json, the model card and MLflow; a Hub dataset that cannot be reached is an error that writes
nothing; MLflow is left as it was found; one atomic-write helper; `ensure_adapter` never reuses an adapter of
another recipe; validation and test metrics keep their own names; the split is stratified by specialty."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import RECIPE, tiny_args

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model_dir):
    """One short run on a local copy of the bundled corpus, from a relative path, with validation and test."""
    from medreason.readers import bundled_path
    from medreason.train import train

    work = tmp_path_factory.mktemp("provenance")
    (work / "in").mkdir()
    (work / "in" / "x.jsonl").write_bytes(bundled_path("corpus.jsonl").read_bytes())
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        result = train(
            tiny_args(
                tiny_model_dir,
                work,
                "--dataset",
                "in/x.jsonl",
                "--max_examples",
                "60",
                "--evaluate_test",
                "true",
                "--eval_steps",
                "2",
                steps=2,
            )
        )
    return work, uri, result


def test_metadata_card_and_mlflow_name_the_real_sources(local_run, tiny_model_dir):
    import mlflow

    work, uri, result = local_run
    meta = json.loads((result.adapter_dir / "medreason.json").read_text())
    data_file = (work / "in" / "x.jsonl").resolve()
    # the data: a local file, by absolute path (usable from any working directory), with its content hash
    assert meta["data"]["kind"] == "file" and meta["data"]["path"] == str(data_file)
    assert meta["data"]["sha256"] == sha256(data_file)
    assert meta["data"]["args"]["max_examples"] == 60
    assert sum(meta["data"]["rows"].values()) == 60
    # the model: a local folder, with one hash of every file a load reads from it (weights, config, tokenizer)
    weights = hashlib.sha256()
    loaded = (".safetensors", ".json", ".jinja")
    for p in sorted(q for q in tiny_model_dir.iterdir() if q.name.endswith(loaded)):
        weights.update(p.name.encode() + b"\0" + sha256(p).encode() + b"\n")
    assert meta["model"]["kind"] == "local" and meta["model"]["sha256"] == weights.hexdigest()
    card = (result.adapter_dir / "README.md").read_text()
    assert meta["data"]["sha256"][:16] in card and meta["model"]["sha256"][:16] in card
    assert f"train {meta['data']['rows']['train']}" in card
    params = mlflow.MlflowClient(uri).get_run(result.mlflow_run_id).data.params
    assert params["data_sha256"] == meta["data"]["sha256"] and params["data_kind"] == "file"
    assert params["model_sha256"] == meta["model"]["sha256"]
    assert params["data_rows_train"] == str(meta["data"]["rows"]["train"])


def test_validation_and_test_metrics_keep_their_names(local_run):
    """TRL names the metrics it adds during any evaluation eval_*: the test split's token accuracy used to
    overwrite the validation one under eval_mean_token_accuracy."""
    import mlflow

    _, uri, result = local_run
    assert {"eval_loss", "eval_mean_token_accuracy", "test_loss", "test_mean_token_accuracy"} <= set(result.metrics)
    client = mlflow.MlflowClient(uri)
    token_acc = client.get_metric_history(result.mlflow_run_id, "eval_mean_token_accuracy")
    val_loss = client.get_metric_history(result.mlflow_run_id, "eval_loss")
    # one validation token accuracy per validation pass: none comes from the test pass
    assert len(token_acc) == len(val_loss) >= 1
    test_acc = client.get_metric_history(result.mlflow_run_id, "test_mean_token_accuracy")
    assert len(test_acc) == 1 and test_acc[0].step == result.global_step


def test_evaluate_rebuilds_the_exact_split_from_another_directory(local_run, tmp_path, monkeypatch):
    from medreason.scoring import training_data
    from medreason.session import Session

    work, _, result = local_run
    monkeypatch.chdir(tmp_path)  # the adapter was trained on the relative path in/x.jsonl
    meta = json.loads((result.adapter_dir / "medreason.json").read_text())
    session = Session(model=None, tokenizer=None, base_model="x", adapter=str(result.adapter_dir), meta=meta)
    from medreason.data import load_splits

    splits = load_splits(**training_data(session))
    assert {name: len(ds) for name, ds in splits.items()} == meta["data"]["rows"]


def test_changed_training_file_is_refused(local_run, tmp_path):
    from medreason.errors import UserError
    from medreason.scoring import training_data
    from medreason.session import Session

    work, _, result = local_run
    meta = json.loads((result.adapter_dir / "medreason.json").read_text())
    meta["data"]["sha256"] = "0" * 64
    session = Session(model=None, tokenizer=None, base_model="x", adapter=str(result.adapter_dir), meta=meta)
    with pytest.raises(UserError, match="changed since"):
        training_data(session)


def test_unreachable_hub_dataset_is_one_line_and_writes_nothing(in_tmp, capsys, tiny_model_dir):
    from medreason.cli import main

    before = sorted(p.name for p in in_tmp.iterdir())
    code = main(
        ["train", *tiny_args(tiny_model_dir, in_tmp, "--dataset", "FreedomIntelligence/medical-o1-reasoning-SFT")]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medreason: error:")]
    assert code == 2 and len(err) == 1
    assert "FreedomIntelligence/medical-o1-reasoning-SFT" in err[0] and "--dataset bundled" in err[0]
    assert sorted(p.name for p in in_tmp.iterdir()) == before


def test_mlflow_run_statuses_and_globals(tmp_path):
    import mlflow

    from medreason.tracking import mlflow_run

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    uri_before, env_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    ids = {}
    with mlflow_run("t", run_name="ok", uri=uri) as run:
        assert mlflow.get_tracking_uri() == uri
        ids["FINISHED"] = run.info.run_id
    for exc, status in ((ValueError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")):
        with pytest.raises(type(exc)):
            with mlflow_run("t", uri=uri) as run:
                ids[status] = run.info.run_id
                raise exc
    client = mlflow.MlflowClient(uri)
    assert {s: client.get_run(i).info.status for s, i in ids.items()} == {s: s for s in ids}
    assert mlflow.active_run() is None
    assert mlflow.get_tracking_uri() == uri_before and os.environ.get("MLFLOW_TRACKING_URI") == env_before
    # a URI the caller set with mlflow.set_tracking_uri is put back too
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'callers.db'}")
    try:
        with mlflow_run("t", uri=uri):
            assert mlflow.get_tracking_uri() == uri
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'callers.db'}"
    finally:
        # Not set_tracking_uri(uri_before): with nothing set, uri_before is MLflow's default, ./mlflow.db of the
        # working directory (the repository's top under pytest), and setting it also exports MLFLOW_TRACKING_URI,
        # which every later subprocess of the session inherited: that is what wrote mlflow.db and mlartifacts/
        # at the top of the repository (issue 32). None unsets both; the caller's variable is put back.
        mlflow.set_tracking_uri(None)
        if env_before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_before
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before and mlflow.get_tracking_uri() == uri_before


def test_atomic_helpers_leave_nothing_half_written(tmp_path):
    from medreason.io import atomic_dir, atomic_open, atomic_write_json

    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write('{"half": ')
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"x": 1}
    folder = tmp_path / "adapter"
    with atomic_dir(folder) as tmp:
        (tmp / "w").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "w").write_text("second, half")
            raise RuntimeError("crash")
    assert (folder / "w").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "adapter"]


def test_symlink_atomic_writes_replace_the_link_never_its_target(tmp_path):
    """issue 32: no write follows a symlink. An atomic write onto a path that is a symlink replaces the link; the
    file it pointed to, somebody else's, is untouched (files and folders alike)."""
    from medreason.io import atomic_dir, atomic_write_text

    theirs = tmp_path / "theirs.txt"
    theirs.write_text("keep me")
    link = tmp_path / "eval.json"
    link.symlink_to(theirs)
    atomic_write_text(link, "ours")
    assert theirs.read_text() == "keep me" and not link.is_symlink() and link.read_text() == "ours"
    their_folder = tmp_path / "their-folder"
    their_folder.mkdir()
    (their_folder / "w").write_text("keep me too")
    folder_link = tmp_path / "adapter"
    folder_link.symlink_to(their_folder)
    with atomic_dir(folder_link) as tmp:
        (tmp / "w").write_text("ours")
    assert (their_folder / "w").read_text() == "keep me too" and not folder_link.is_symlink()
    assert (folder_link / "w").read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "eval.json", "their-folder", "theirs.txt"]


def test_ensure_adapter_retrains_when_the_recipe_changed(in_tmp, tiny_model_dir, caplog):
    import logging

    from medreason.train import ensure_adapter

    overrides = tiny_args(tiny_model_dir, in_tmp, "--eval_strategy", "no", "--save_strategy", "no", steps=1)[2:]
    caplog.set_level(logging.INFO, logger="medreason")
    first = ensure_adapter(str(RECIPE), overrides)
    stamp = (first / "adapter_model.safetensors").stat().st_mtime_ns
    assert ensure_adapter(str(RECIPE), overrides) == first  # same recipe: reused
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    caplog.clear()
    again = ensure_adapter(str(RECIPE), [*overrides, "--lora_r", "4"])
    assert again == first and "another recipe" in caplog.text
    assert json.loads((first / "adapter_config.json").read_text())["r"] == 4


def test_split_is_stratified_by_specialty():
    from collections import Counter

    from medreason.data import load_clean_rows, split_rows

    rows, _ = load_clean_rows("bundled")
    parts = split_rows(rows)
    specialties = {r["specialty"] for r in rows}
    for name in ("validation", "test"):
        assert set(Counter(r["specialty"] for r in parts[name])) == specialties, name


def test_recipe_hash_follows_the_continued_adapters_weights(tmp_path):
    """A GRPO adapter built on an SFT adapter is stale once the SFT adapter is retrained: the hash that
    ensure_adapter compares covers the continued adapter's weights, not only its path."""
    from medreason.config import parse_config
    from medreason.run import recipe_hash_of as run_recipe_hash

    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "adapter_model.safetensors").write_bytes(b"first weights")
    argv = ["--config", str(RECIPE.parent / "smollm2-135m-grpo-cpu.yaml"), "--init_adapter", str(sft)]
    first = run_recipe_hash(*parse_config(argv))
    assert run_recipe_hash(*parse_config(argv)) == first
    (sft / "adapter_model.safetensors").write_bytes(b"retrained weights")
    assert run_recipe_hash(*parse_config(argv)) != first


def test_ensure_adapter_moves_checkpoints_of_another_recipe_aside(in_tmp, tiny_model_dir):
    """The book retrains when a recipe changes; the old run's checkpoints would make train() refuse
    ("already holds checkpoints"), and resuming them would mix two recipes: they are moved aside, not deleted."""
    from medreason.train import ensure_adapter, last_checkpoint

    overrides = tiny_args(tiny_model_dir, in_tmp, "--eval_strategy", "no", "--save_steps", "1", steps=1)[2:]
    ensure_adapter(str(RECIPE), overrides)
    out = in_tmp / "out"
    assert last_checkpoint(out) is not None and (out / "recipe_hash").is_file()
    ensure_adapter(str(RECIPE), [*overrides, "--lora_r", "4"])
    aside = sorted(in_tmp.glob("out.superseded-*"))
    assert len(aside) == 1 and last_checkpoint(aside[0]) is not None
    assert last_checkpoint(out) is not None  # the new recipe's own run
