"""MLflow adapter: turns `train`'s `report(step, metrics, files)` calls into an MLflow run.

    tracker = MlflowTracker.open(tracking_uri, "plasticity", run_name, cfg.to_dict())
    result = train(cfg, report=tracker)
    tracker.finish(result.run_dir, model=result.model, flavor=episode_flavor)

Params are the config's fields (the same names as the CLI flags). The model is logged in
the flavour the caller hands over (`episode_flavor` from `plasticity.serving.mlflow_pyfunc`:
a pyfunc answering whole episodes), else as a PyTorch module. If the server stops
answering mid-run, metrics are kept in memory and sent again at the next report, so a
server restart loses nothing; training never stops because of tracking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plasticity.errors import TrackingError
from plasticity.redact import redact

DEFAULT_DB = "mlruns.db"


def default_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else a SQLite store `mlruns.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


@contextlib.contextmanager
def _quick_http():
    """Fail fast while probing a server (MLflow retries for minutes by default)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _short(e: BaseException) -> str:
    text = redact(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def refused(e: BaseException) -> bool:
    """An MLflow error saying the server wants (other) credentials: HTTP 401 or 403."""
    return any(f"error code {code} " in str(e) for code in (401, 403)) or \
        getattr(e, "error_code", "") in ("UNAUTHENTICATED", "PERMISSION_DENIED")


@contextlib.contextmanager
def _sqlite_first_use_lock(uri: str):
    """Hold an exclusive lock on `<db>.lock` while MLflow opens a SQLite store: the first
    opening creates and migrates its tables, and two processes doing that at once (two
    `plasticity train` started together in a fresh folder) fail with "duplicate column"."""
    prefix = "sqlite:///"
    path = Path(uri[len(prefix):]) if uri.startswith(prefix) else None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as MLflow itself
        fcntl = None
    if path is None or fcntl is None or not path.parent.is_dir():
        yield
        return
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_tracking(uri: str):
    """Return an `MlflowClient` for `uri`, or raise `TrackingError` naming the fix. A
    PostgreSQL store is probed first with a short timeout (MLflow's SQLAlchemy engine
    retries a dead server for minutes and prints every retry)."""
    from mlflow.tracking import MlflowClient

    from plasticity.tracking.database import postgres_problem

    problem = postgres_problem(uri)
    if problem:
        raise TrackingError(f"{problem}: fix the server or --tracking-uri / MLFLOW_TRACKING_URI, or pass --no-tracking")
    try:
        with _quick_http(), _sqlite_first_use_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot use this store"
        if refused(e):
            raise TrackingError(f"MLflow at {redact(uri)}: credentials refused: set MLFLOW_TRACKING_USERNAME/PASSWORD "
                                "to a user of this server") from None
        raise TrackingError(
            f"cannot use MLflow tracking store {redact(uri)} ({type(e).__name__}: {_short(e)}): start the server "
            "(`mlflow server --port 5000`), fix --tracking-uri / MLFLOW_TRACKING_URI, or pass --no-tracking"
        ) from None
    return client


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


ModelFlavor = Callable[[Any, str, Path | None], str | None]
"""How a caller has a model logged in its own MLflow flavour: `flavor(model, name,
checkpoint)`, called inside the active run, logs `model` under `name` and returns its
model URI, or returns None when it does not cover this model (then it is logged as plain
PyTorch). The tracker does not know the flavours: serving provides them (`plasticity.serving`
imports tracking, never the other way round)."""


@contextlib.contextmanager
def quiet_model_logging():
    """While logging a model: no warnings, and mlflow.pytorch's logger at ERROR only (it
    warns about pickle on every call; pickling the module is deliberate)."""
    logger = logging.getLogger("mlflow.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


class MlflowTracker:
    """A `Report` that logs to one MLflow run (see the module docstring)."""

    def __init__(self, client, run_id: str, uri: str):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.pending: list[tuple[int, dict[str, float]]] = []
        self._warned = False
        self._backend_tagged = False

    @classmethod
    def open(cls, uri: str | None, experiment: str, run_name: str, params: dict[str, Any],
             tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> MlflowTracker:
        uri = uri or default_tracking_uri()
        client = check_tracking(uri)
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        tags = {k: redact(v) for k, v in tags.items()}
        run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags)
        tracker = cls(client, run.info.run_id, uri)
        tracker.log_params(params)
        return tracker

    @classmethod
    def reopen(cls, uri: str | None, run_id: str) -> MlflowTracker | None:
        """Continue an existing run (a resumed training run), marked running again;
        None if this store does not hold it (another tracking URI). A store that does not
        answer is a `TrackingError` (not a reason to start a second run)."""
        uri = uri or default_tracking_uri()
        client = check_tracking(uri)
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "resumed", "true")
        except Exception as e:  # noqa: BLE001 - MLflow's and its HTTP client's errors alike
            if getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # not in this store
            raise TrackingError(f"MLflow at {redact(uri)} did not answer about run {run_id} ({_short(e)}): start "
                                "the server, or pass --no-tracking") from None
        return cls(client, run_id, uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # Redacted: params are readable by everyone who can read the experiment, and a
        # sweep's params include its storage URLs.
        items = [Param(k, "None" if v is None else redact(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def __call__(self, step: int, metrics: dict[str, float], files: dict[str, Path]) -> None:
        self.pending.append((step, dict(metrics)))
        self.flush()
        self._tag_backend()
        for name, path in files.items():
            if name != "checkpoint" and Path(path).suffix == ".png":
                self.attempt(self.client.log_artifact, self.run_id, str(path), f"figures/{name}_{step:09d}")

    def _tag_backend(self) -> None:
        """Tag `perf/backend` with the fused kernels the run used (`triton`, `cpp`, `torch`),
        known once training has run a fused episode; not tagged for models without one."""
        if self._backend_tagged:
            return
        from plasticity.nn.fused import chosen_backend

        backend = chosen_backend()
        if backend is not None:
            self._backend_tagged = self.attempt(self.client.set_tag, self.run_id, "perf/backend", backend)

    def flush(self) -> bool:
        """Send buffered metrics; keep them if the server does not answer."""
        from mlflow.entities import Metric

        if not self.pending:
            return True
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for step, m in self.pending for k, v in m.items()]
        for i in range(0, len(batch), 1000):
            # Keep everything on failure: re-sending a (key, step, timestamp) is harmless.
            if not self.attempt(self.client.log_batch, self.run_id, metrics=batch[i:i + 1000]):
                return False
        self.pending = []
        return True

    def deliver(self, timeout_s: float, wait_s: float = 2.0) -> bool:
        """Send buffered metrics, trying again for up to `timeout_s` (a server restart).
        Called before the trainer hands control away (a sweep's checkpoint, where the
        process may be stopped), so that the buffer is empty when it could be lost."""
        deadline = time.monotonic() + timeout_s
        while not self.flush():
            if time.monotonic() >= deadline:
                return False
            time.sleep(wait_s)
        return True

    def attempt(self, fn, *args, **kwargs) -> bool:
        """Call an MLflow client method; on failure warn once and return False."""
        try:
            fn(*args, **kwargs)
            return True
        except Exception as e:  # noqa: BLE001 - tracking must never stop training
            if not self._warned:
                print(f"plasticity: warning: MLflow at {redact(self.uri)} failed ({_short(e)}); metrics are buffered "
                      "and will be sent again", file=sys.stderr)
                self._warned = True
            return False

    def finish(self, run_dir: Path | None = None, model=None, status: str = "FINISHED",
               retries: int = 5, wait_s: float = 2.0, flavor: ModelFlavor | None = None) -> None:
        """Flush metrics, upload the run folder (checkpoint, figures, metrics) and the
        model (in `flavor`, see `log_model`), and close the run. Retries a few times if
        the server is down."""
        for tries in range(retries):
            if self.flush():
                break
            time.sleep(wait_s * (tries + 1))
        if run_dir is not None:
            for path in sorted(Path(run_dir).iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    self.attempt(self.client.log_artifact, self.run_id, str(path), "run")
        if model is not None:
            checkpoint = None if run_dir is None else Path(run_dir) / "checkpoint.pt"
            self.attempt(self.log_model, model, checkpoint=checkpoint, flavor=flavor)
        self.attempt(self.client.set_terminated, self.run_id, status)

    def log_model(self, model, name: str = "model", checkpoint: Path | None = None,
                  flavor: ModelFlavor | None = None) -> str:
        """Log `model` under this run; returns its model URI. `flavor` (given by the
        caller, e.g. `plasticity.serving.mlflow_pyfunc.episode_flavor`, whose pyfunc
        answers whole episodes) logs it in its own way when it covers the model and its
        `checkpoint`; otherwise, or without one, it is logged as a pickled PyTorch module.
        It loads with `mlflow.pytorch.load_model` either way."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
            uri = None if flavor is None else flavor(model, name, checkpoint)
            return uri if uri is not None else self._log_pytorch(model, name)

    def _log_pytorch(self, model, name: str) -> str:
        import mlflow
        import torch

        import plasticity

        with quiet_model_logging():
            # "pickle": the whole module, loadable with mlflow.pytorch.load_model. The
            # "pt2" export cannot trace the episode loop's Python control flow.
            info = mlflow.pytorch.log_model(
                model.cpu(), name=name, serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"plasticity=={plasticity.__version__}"])
        return info.model_uri

