"""The MLflow run of a training run: opened once, reopened on every resume, closed at the end.

    session = MlflowSession(uri, "plasticity", name=run_name)
    result = train(cfg, tracking=session)      # plasticity.train.run: check, open, report, close

`plasticity.train.run.train` calls `check()` before it makes the run folder and
`open(cfg, run_dir)` once the run folder and the final config are known. The MLflow run
id is kept in the run folder (`mlflow_run_id`): a resumed run finds it there and goes on
in the same MLflow run, marked running again (a sweep trial puts the file back from its
Tune checkpoint beside `checkpoint.pt`). Where the folder records none, `earlier(client)`
may name a run an earlier attempt created (a sweep trial that failed before its first
checkpoint); otherwise a new run is created and recorded. The command line
(`plasticity train`) and the sweep trials (`tune/trainable.py`) both open their runs here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasticity.errors import TrackingError
from plasticity.redact import redact
from plasticity.tracking.mlflow import MlflowTracker, ModelFlavor, check_tracking, default_tracking_uri

RUN_ID_FILE = "mlflow_run_id"
"""Holds the MLflow run id in a run folder, so that a resumed run continues its MLflow run."""


def _config_params(cfg) -> dict[str, Any]:
    return cfg.to_dict()


def _config_tags(cfg) -> dict[str, str]:
    return {"task": cfg.task, "model": cfg.model}


@dataclass
class MlflowSession:
    """How a training run is recorded in MLflow (`plasticity.train.run.Tracking`); the
    callables take the run's final config (a resumed run's comes from its checkpoint)."""

    uri: str | None
    """Tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here."""
    experiment: str
    name: Callable[[Any], str]
    """The name of a new MLflow run."""
    params: Callable[[Any], dict[str, Any]] = _config_params
    """The params a new run logs (default: every config field)."""
    tags: Callable[[Any], dict[str, str]] = _config_tags
    """The tags a new run gets (default: task and model)."""
    parent_run_id: str | None = None
    attempt_tags: dict[str, str] = field(default_factory=dict)
    """Tags set at every opening, new run or resumed (where this attempt ran)."""
    earlier: Callable[[Any], str | None] | None = None
    """`earlier(client)`: a run an earlier attempt created, when the folder records none."""
    wait_s: float = 0.0
    """How long to wait for a store that does not answer (a server restarting) before
    failing; wrong credentials fail at once."""
    log_model: bool = True
    """Log the trained model when the run finishes."""
    flavor: ModelFlavor | None = None
    """The flavour the model is logged in (`MlflowTracker.log_model`)."""
    announce: bool = False
    """Say which MLflow run this is, on stderr."""
    tracker: MlflowTracker | None = field(default=None, init=False)
    """The open run (after `open`): reports go to it."""

    def __post_init__(self):
        self.uri = self.uri or default_tracking_uri()

    def check(self) -> None:
        """The store can be used (a `TrackingError` naming the fix, after `wait_s`)."""
        self._waiting(lambda: check_tracking(self.uri))

    def open(self, cfg, run_dir: Path) -> MlflowTracker:
        """The MLflow run of the run in `run_dir` (module docstring), recorded there."""
        self.tracker = self._waiting(lambda: self._open(cfg, Path(run_dir)))
        return self.tracker

    def _open(self, cfg, run_dir: Path) -> MlflowTracker:
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not run_id and self.earlier is not None:
            run_id = self.earlier(check_tracking(self.uri))
        tracker = MlflowTracker.reopen(self.uri, run_id) if run_id else None
        if tracker is None:
            tracker = MlflowTracker.open(self.uri, self.experiment, self.name(cfg), self.params(cfg),
                                         tags=self.tags(cfg), parent_run_id=self.parent_run_id)
        id_file.write_text(tracker.run_id)
        for key, value in self.attempt_tags.items():
            tracker.attempt(tracker.client.set_tag, tracker.run_id, key, value)
        if self.announce:
            print(f"MLflow run {tracker.run_id} at {redact(tracker.uri)}", file=sys.stderr)
        return tracker

    def _waiting(self, fn):
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return fn()
            except TrackingError as e:
                if "credentials refused" in str(e) or time.monotonic() >= deadline:
                    raise
                time.sleep(2.0)

    def stopped(self, again: str) -> None:
        """Tag the run `resumable` with the command that continues it."""
        if self.tracker is not None:
            self.tracker.attempt(self.tracker.client.set_tag, self.tracker.run_id, "resumable", again)

    def close(self, status: str, result=None) -> None:
        """Close the run: FINISHED with the run folder uploaded (and the model, with
        `log_model`), or KILLED / FAILED after one quick try to send what is buffered."""
        if self.tracker is None:
            return
        if status != "FINISHED" or result is None:
            self.tracker.finish(status=status, retries=1)
            return
        model = result.model if self.log_model else None
        self.tracker.finish(result.run_dir, model=model, flavor=self.flavor)
