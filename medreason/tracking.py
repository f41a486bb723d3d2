"""MLflow, in one place: where runs are stored, how a run starts and ends, and how the book reads them back.

    from medreason.tracking import mlflow_run
    with mlflow_run("medreason", run_name="smollm2-135m-cpu") as run:   # FINISHED on success
        ...                                                              # FAILED on an error, KILLED on Ctrl-C/SIGTERM
    medreason.tracking.metric_history(run_id, "loss")                   # read back, for plots

The store is `MLFLOW_TRACKING_URI` when set, else a SQLite file `results/mlflow.db` with its artifacts beside
it in `results/mlartifacts/`. Open the UI with `mlflow ui --backend-store-uri sqlite:///results/mlflow.db`.

A library leaves the process as it found it: `mlflow_run` points MLflow at the store only for the duration of
the block, through the `MLFLOW_TRACKING_URI` environment variable (and, when the caller had set a different URI
with `mlflow.set_tracking_uri`, through that call, restored afterwards), and creates the experiment by id
instead of making it MLflow's active experiment. The trainer's MLflow callback logs into the active run.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "MLFLOW_TRACKING_URI"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else a SQLite store at results/mlflow.db (absolute, so a later chdir is
    harmless)."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    return f"sqlite:///{Path('results/mlflow.db').resolve()}"


@contextmanager
def using_store(uri: str | None = None):
    """MLflow's fluent API points at `uri` (default `tracking_uri()`) inside the block, and at whatever it
    pointed at before afterwards."""
    import mlflow

    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get(ENV)
    os.environ[ENV] = uri
    # a URI set with mlflow.set_tracking_uri wins over the environment: only then do we have to set (and restore) it
    global_before = mlflow.get_tracking_uri()
    override = global_before != uri
    if override:
        mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        if override:
            mlflow.set_tracking_uri(global_before)
        if env_before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = env_before


def experiment_id(name: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite store) when it does not exist."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # MLflow's default would be ./mlruns in whatever the working directory is
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created by a concurrent process in between
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def mlflow_run(
    experiment: str,
    run_name: str | None = None,
    run_id: str | None = None,
    *,
    uri: str | None = None,
    enabled: bool = True,
):
    """Start (or, with `run_id`, resume) a run and yield it; end it FINISHED, FAILED (an exception) or KILLED
    (KeyboardInterrupt, which medreason also raises on SIGTERM). `enabled=False` (other ranks of a distributed
    run) yields None and touches nothing."""
    if not enabled:
        yield None
        return
    import mlflow

    with using_store(uri) as store:
        exp = experiment_id(experiment, store)
        run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp, run_name=run_name)
        status = "FINISHED"
        try:
            yield run
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run.info.run_id:
                mlflow.end_run(status=status)
            else:  # someone (the trainer's callback) ended it already: set the final status explicitly
                mlflow.MlflowClient(store).set_terminated(run.info.run_id, status=status)
            while mlflow.active_run() is not None:  # nested runs a callee left open
                mlflow.end_run(status=status)


def log_params(params: dict):
    """Log params into the active run; values are cut to MLflow's 500 characters. Enum values as plain strings
    ('cosine', not 'SchedulerType.COSINE'), as the trainer's callback logs them: MLflow refuses a param logged
    twice with different values."""
    import mlflow

    mlflow.log_params({k: str(getattr(v, "value", v))[:500] for k, v in params.items()})


# --------------------------------------------------------------------------------------------- reading back


def client(uri: str | None = None):
    import mlflow

    return mlflow.MlflowClient(uri or tracking_uri())


def metric_history(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, in step order."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def metric_points(run_id: str, key: str, uri: str | None = None) -> list[tuple[int, int, float]]:
    """(step, timestamp in ms, value) of one metric, in step order: for rates over time, such as TRL's
    cumulative `num_tokens` (`medreason.estimates.tokens_per_second`)."""
    return sorted((m.step, m.timestamp, m.value) for m in client(uri).get_metric_history(run_id, key))


def find_runs(
    experiment: str = "medreason",
    run_name: str | None = None,
    status: str | None = None,
    max_runs: int = 5,
    uri: str | None = None,
) -> list[dict]:
    """The latest runs of an experiment, newest first, as plain dicts (run_id, run_name, status, start_time
    in ms, metrics, params), optionally only those with this run name and status. [] without the experiment."""
    store = client(uri)
    exp = store.get_experiment_by_name(experiment)
    if exp is None:
        return []
    filters = []
    if run_name is not None:
        filters.append(f"attributes.run_name = '{run_name}'")
    if status is not None:
        filters.append(f"attributes.status = '{status}'")
    runs = store.search_runs(
        [exp.experiment_id],
        filter_string=" and ".join(filters),
        order_by=["attributes.start_time DESC"],
        max_results=max_runs,
    )
    return [
        {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
            "metrics": dict(r.data.metrics),
            "params": dict(r.data.params),
        }
        for r in runs
    ]


def set_tags(tags: dict):
    """Tags of the active run."""
    import mlflow

    mlflow.set_tags(tags)


def log_dicts(documents: dict[str, dict]):
    """Each document (name -> dict) as <name>.json in the active run's artifacts."""
    import mlflow

    for name, document in documents.items():
        mlflow.log_dict(document, f"{name}.json")


def log_metrics(metrics: dict[str, float], step: int | None = None):
    """Metrics of the active run (names MLflow refuses are rewritten: see `metric_name`)."""
    import mlflow

    mlflow.log_metrics({metric_name(k): float(v) for k, v in metrics.items()}, step=step)


def metric_name(text: str) -> str:
    """MLflow accepts letters, digits, `_ - . /` and spaces in names: anything else becomes `_`."""
    import re

    return re.sub(r"[^\w\-./ ]", "_", text)


def log_final(metrics: dict[str, float], adapter_dir):
    """A finished training run: its final metrics (final_*) and the saved adapter folder."""
    import mlflow

    log_metrics({f"final_{k}": v for k, v in metrics.items()})
    mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")


def log_artifact(path):
    import mlflow

    mlflow.log_artifact(str(path))
