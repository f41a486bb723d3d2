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

A training run records its (absolute) store beside its checkpoints (`mlflow_store`): `--resume` finds its MLflow
run there from any working directory (`resume_store`). MLflow's own INFO lines stay off stderr (`quiet_mlflow`),
and a store that cannot be written because its disk is full is one line naming it (`store_errors`).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "MLFLOW_TRACKING_URI"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else a SQLite store at results/mlflow.db; a SQLite path is made absolute, so
    that a later chdir, or a resume from another folder, finds the same store."""
    if os.environ.get(ENV):
        return absolute(os.environ[ENV])
    return f"sqlite:///{Path('results/mlflow.db').resolve()}"


def absolute(uri: str) -> str:
    """A relative SQLite URI (`sqlite:///mlflow.db`, relative to the working directory) as an absolute one."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


@contextmanager
def quiet_mlflow(level: int = logging.WARNING):
    """MLflow's own INFO lines ("Creating initial MLflow database tables...") kept off stderr for the block,
    through MLflow's documented setting: the environment variable MLFLOW_LOGGING_LEVEL, which MLflow reads when
    it is imported, and, when it is imported already, the level of its `mlflow` logger. Both are put back."""
    name = "MLFLOW_LOGGING_LEVEL"
    env_before = os.environ.get(name)
    imported = "mlflow" in sys.modules
    logger = logging.getLogger("mlflow")
    level_before = logger.level
    if env_before is None:
        os.environ[name] = logging.getLevelName(level)
    if imported and env_before is None:
        logger.setLevel(level)
    try:
        yield
    finally:
        if env_before is None:
            os.environ.pop(name, None)
            if imported:
                logger.setLevel(level_before)
            elif "mlflow" in sys.modules:  # imported inside the block: the level MLflow would have set itself
                logger.setLevel(logging.INFO)


@contextmanager
def using_store(uri: str | None = None):
    """MLflow's fluent API points at `uri` (default `tracking_uri()`) inside the block, and at whatever it
    pointed at before afterwards."""
    import mlflow

    uri = absolute(uri or tracking_uri())
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
        with quiet_mlflow():
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

    with using_store(uri) as store, store_errors(store):
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
            try:
                if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run.info.run_id:
                    mlflow.end_run(status=status)
                else:  # someone (the trainer's callback) ended it already: set the final status explicitly
                    mlflow.MlflowClient(store).set_terminated(run.info.run_id, status=status)
                while mlflow.active_run() is not None:  # nested runs a callee left open
                    mlflow.end_run(status=status)
            except Exception:
                if status == "FINISHED":
                    raise
                # the block failed already (a full store fails here too): that first error is the one to report
                log.debug("could not end the MLflow run %s", run.info.run_id, exc_info=True)
                while mlflow.active_run() is not None:  # end_run leaves the stack before it writes: none stays open
                    with suppress(Exception):
                        mlflow.end_run(status=status)


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FULL_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")


def store_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, says the disk (or the SQLite file) is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL:
            return True
        if any(text in str(error).lower() for text in FULL_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def store_errors(uri: str):
    """A store that cannot be written because its disk is full is one line (exit 2) naming the store, instead of
    MLflow's and SQLAlchemy's error with the whole SQL statement and its parameters. A full disk elsewhere (an
    OSError naming its file: a checkpoint, a results file) is left to medreason.cli, which names that file."""
    from medreason.errors import UserError

    # MLflow logs the SQL error with its whole traceback before it raises it: for a full store, that is the error
    # reported below in one line, so its record is dropped (a standard logging filter, removed afterwards)
    db_log = logging.getLogger("mlflow.store.db.utils")
    db_log.addFilter(_not_a_full_store)
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if not store_full(e) or not from_the_store(e):  # a full disk under another write names its own file
            raise
        where = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri
        raise UserError(
            f"{where}: no space left to write the MLflow run (disk full): free space, or set MLFLOW_TRACKING_URI "
            f"to a store on another disk"
        ) from e
    finally:
        db_log.removeFilter(_not_a_full_store)


def from_the_store(error: BaseException) -> bool:
    """Whether `error` comes from writing the MLflow store (MLflow's or SQLAlchemy's own exception, or one raised
    from it), not from another write inside the tracked block (a checkpoint, the adapter)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "sqlite3"):
            return True
        error = error.__cause__ or error.__context__
    return False


def _not_a_full_store(record: logging.LogRecord) -> bool:
    return not (record.exc_info and record.exc_info[1] is not None and store_full(record.exc_info[1]))


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
    cumulative `num_tokens` (`medreason.compute.tokens_per_second`)."""
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
    """Metrics of the active run, their names mapped onto what MLflow accepts (medreason.guards.mlflow_key)."""
    import mlflow

    from medreason.guards import mlflow_key

    mlflow.log_metrics({mlflow_key(k): float(v) for k, v in metrics.items()}, step=step)


def log_final(metrics: dict[str, float], adapter_dir):
    """A finished training run: its final metrics (final_*) and the saved adapter folder."""
    import mlflow

    log_metrics({f"final_{k}": v for k, v in metrics.items()})
    mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")


def log_artifact(path):
    import mlflow

    mlflow.log_artifact(str(path))


# --------------------------------------------------------------------------------------------- resuming

STORE_FILE = "mlflow_store"  # beside a run's checkpoints: the store its MLflow run lives in


def remember_store(output_dir: Path, uri: str) -> None:
    """Record, beside the checkpoints, the (absolute) store the run logs to: `--resume` finds it there, from any
    working directory."""
    from medreason.io import atomic_write_text

    atomic_write_text(Path(output_dir) / STORE_FILE, absolute(uri))


def resume_store(output_dir: Path, run_id: str | None) -> str | None:
    """The store that holds `run_id`, the MLflow run a resumed run continues: MLFLOW_TRACKING_URI when the user set
    it, else the store recorded beside the checkpoints, else results/mlflow.db of this folder (checkpoints from
    before stores were recorded), whichever holds the run. None of them: one line, and no empty store is made."""
    from medreason.errors import UserError

    if run_id is None:
        return None
    recorded = Path(output_dir) / STORE_FILE
    candidates = []
    if os.environ.get(ENV):
        candidates.append(tracking_uri())
    if recorded.is_file():
        candidates.append(absolute(recorded.read_text().strip()))
    candidates.append(f"sqlite:///{Path('results/mlflow.db').resolve()}")
    for uri in dict.fromkeys(candidates):
        if not uri.startswith("sqlite:///"):
            return uri  # a tracking server: MLflow reports a missing run itself
        if Path(uri.removeprefix("sqlite:///")).is_file() and _holds_run(uri, run_id):
            return uri
    looked = ", ".join(u.removeprefix("sqlite:///") for u in dict.fromkeys(candidates))
    raise UserError(
        f"--resume: no MLflow store holds the run {run_id} of {output_dir} (looked in {looked}): set "
        f"MLFLOW_TRACKING_URI to the store that holds it"
    )


def _holds_run(uri: str, run_id: str) -> bool:
    import mlflow

    with quiet_mlflow():
        try:
            mlflow.MlflowClient(uri).get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
    return True
