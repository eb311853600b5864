"""One sweep trial: `train_trial(config, sweep)` runs `plasticity.train.train` and reports
to Ray Tune (metrics + checkpoint at every evaluation) and to its own MLflow child run.

A trial that Ray restarts after a failure resumes from its last checkpoint and keeps
writing to the same MLflow run: the run's lifecycle is `plasticity.train.run`'s and its
MLflow run `plasticity.tracking.session`'s, as for `plasticity train`; the run id file
travels in the Tune checkpoint beside `checkpoint.pt`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from plasticity.config import preset
from plasticity.plugins import load_specs
from plasticity.tracking.mlflow import experiment_id
from plasticity.tracking.params import applicable_params
from plasticity.tracking.session import RUN_ID_FILE, MlflowSession
from plasticity.train import train
from tune.search import TRIAL_NUMBER
from tune.spaces import SWITCH_PREFIX
from tune.summary import headline_of, trial_label

RUN_ID_KEY = "mlflow_run_id"
"""The trial's MLflow run id in its Tune results: the driver finds the run by it (one
lookup by key, not a search of the experiment's runs; tune/report.py)."""
BEST_FILE = "best.json"
# How long a trial waits for the tracking server (a restart) before going on without it.
TRACKING_WAIT_S = 300.0
MLFLOW_ENV = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
"""MLflow switches the driver hands to its trials: telemetry (off unless the user says
otherwise, see tune/__init__.py) and the quiet view's "no run links on stdout"."""


def driver_mlflow_env() -> dict[str, str]:
    return {k: os.environ[k] for k in MLFLOW_ENV if k in os.environ}


def apply_mlflow_env(env: dict[str, str]) -> None:
    """Take the driver's MLflow switches where this node's environment has none (a Ray
    worker on another node does not inherit the driver's environment). MLflow reads
    them at each use; its telemetry client, started when mlflow was imported, is set
    up again so that it stops if telemetry is now off."""
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if "mlflow" in sys.modules:
        from mlflow.telemetry.client import get_telemetry_client, set_telemetry_client
        from mlflow.telemetry.utils import is_telemetry_disabled

        if is_telemetry_disabled() and get_telemetry_client() is not None:
            set_telemetry_client()


def telemetry_state() -> str:
    """`off` when this process sends no MLflow telemetry (no client, disabled), else `on`."""
    from mlflow.telemetry.client import get_telemetry_client
    from mlflow.telemetry.utils import is_telemetry_disabled

    return "off" if is_telemetry_disabled() and get_telemetry_client() is None else "on"


@dataclass
class SweepContext:
    """Settings shared by every trial of a sweep (not searched)."""

    task: str
    preset: str
    max_episodes: int
    eval_every: int
    overrides: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str | None = None
    experiment: str = "plasticity-sweeps"
    parent_run_id: str | None = None
    sweep_name: str = "sweep"
    metric: str = "eval/loss"
    """The objective (minimised). A trial's score is its best (lowest) evaluation of it,
    reported as `objective`; Optuna, ASHA, the summary and the registered model use it."""
    mlflow_env: dict[str, str] = field(default_factory=driver_mlflow_env)
    """The driver's MLflow switches (MLFLOW_ENV), taken when the sweep is set up."""
    plugins: list[tuple[str, str | None]] = field(default_factory=list)
    """The driver's plugins (`plasticity.plugins.specs()`), loaded by each trial first."""


def label(trial_id: str, drawn: dict[str, Any]) -> str:
    """`t003` for the study's trial number 3 (Ray's id where there is none)."""
    number = drawn.get(TRIAL_NUMBER)
    return f"t{number:03d}" if isinstance(number, int) else trial_label(trial_id)


def run_name(name: str, cfg) -> str:
    """`t003 eta=0.031 oja shared`: the run's number and the settings people compare."""
    parts = [name]
    if cfg.model != "plastic":
        parts.append(cfg.model)
    if cfg.plastic:
        parts += [f"eta={cfg.eta:.2g}", cfg.rule, cfg.alpha_mode]
    return " ".join(parts)


def trial_params(sweep: SweepContext, cfg, drawn: dict[str, Any]) -> dict[str, Any]:
    """What the child run logs: the resolved config, only fields that apply to its model
    and task, `episodes_planned` instead of `episodes`, and the drawn switches."""
    params = applicable_params(cfg)
    params["episodes_planned"] = params.pop("episodes")
    params.update({k: v for k, v in drawn.items() if k.startswith(SWITCH_PREFIX)})
    return params


def trial_tags(trial_id: str, name: str, sweep: SweepContext, cfg) -> dict[str, str]:
    """Tags the MLflow runs table can show as columns without opening a run."""
    tags = {"trial_id": trial_id, "trial": name, "sweep": sweep.sweep_name, "task": cfg.task,
            "model": cfg.model, "objective_metric": sweep.metric}
    if cfg.plastic:
        tags.update(eta=f"{cfg.eta:.3g}", rule=cfg.rule, alpha_mode=cfg.alpha_mode)
    return tags


def trial_config(sweep: SweepContext, params: dict[str, Any], out: str):
    # Ray hands over every drawn Optuna parameter; switches only gate others.
    params = {k: v for k, v in params.items() if not k.startswith(SWITCH_PREFIX) and k != TRIAL_NUMBER}
    cfg = preset(sweep.task, sweep.preset, **{**sweep.overrides, **params})
    return cfg.replace(episodes=sweep.max_episodes, eval_every=sweep.eval_every,
                       save_every=sweep.eval_every, out=out)


def trial_session(sweep: SweepContext, trial_id: str, drawn: dict[str, Any],
                  placement: dict[str, str]) -> MlflowSession | None:
    """The trial's MLflow child run (None without a tracking store): the one named in its
    run folder (put back from its checkpoint), else the one an earlier attempt of this trial
    created (it failed before its first checkpoint), else a new one. It waits up to
    TRACKING_WAIT_S for a tracking server that is down (restarting): the trial must not
    fail because of it; wrong credentials fail at once."""
    if sweep.tracking_uri is None:
        return None
    name = label(trial_id, drawn)

    def earlier(client) -> str | None:
        runs = client.search_runs([experiment_id(client, sweep.experiment)],
                                  f"tags.sweep = '{sweep.sweep_name}' and tags.trial_id = '{trial_id}'", max_results=1)
        return runs[0].info.run_id if runs else None

    # Which node ran (the latest attempt of) this trial, and on what: shown in MLflow, used by tests.
    where = {"ray_node_id": ray.get_runtime_context().get_node_id(), **{f"ray_{k}": v for k, v in placement.items()}}
    return MlflowSession(sweep.tracking_uri, sweep.experiment, name=lambda cfg: run_name(name, cfg),
                         params=lambda cfg: trial_params(sweep, cfg, drawn),
                         tags=lambda cfg: trial_tags(trial_id, name, sweep, cfg), parent_run_id=sweep.parent_run_id,
                         attempt_tags=where, earlier=earlier, wait_s=TRACKING_WAIT_S, log_model=False)


def trial_device(requested: str) -> tuple[str, dict[str, str]]:
    """(device, placement) of this trial. With `auto`, a trial that Ray gave GPUs
    (`--gpus-per-trial`) trains on them: Ray sets CUDA_VISIBLE_DEVICES to its GPUs, so
    `cuda` is its own (shared with other trials for a fraction); without a GPU it
    trains on CPU, also on a GPU node. A GPU that CUDA cannot reach (e.g. a cluster that
    advertises GPUs it does not have) falls back to CPU with a one-line notice."""
    import torch

    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    device = requested
    if requested == "auto":
        device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
        if gpu_ids and device == "cpu":
            print(f"plasticity: trial assigned GPU {','.join(gpu_ids)} but CUDA is not available here: "
                  "training on CPU", file=sys.stderr, flush=True)
    placement = {"device": device, "gpu_ids": ",".join(gpu_ids) or "none",
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset")}
    return device, placement


def train_trial(config: dict[str, Any], sweep: SweepContext) -> None:
    apply_mlflow_env(sweep.mlflow_env)
    load_specs(sweep.plugins)
    ctx = tune.get_context()
    trial_dir = Path(ctx.get_trial_dir())
    cfg = trial_config(sweep, config, out=str(trial_dir))
    device, placement = trial_device(cfg.device)
    cfg = cfg.replace(device=device)
    # Where (and on what) each attempt ran: read by the placement test, kept with the trial.
    # On a worker node the trial's folder is made by the first file written into it.
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "placement.json").write_text(json.dumps({**placement, "started": time.time(),
                                                          "mlflow_telemetry": telemetry_state()}))
    run_dir, resume = trial_dir / "run", None
    # The trial's score so far (kept across a retry in the checkpoint folder).
    best: dict[str, float] = {"objective": math.inf}
    previous = tune.get_checkpoint()
    if previous is not None:
        with previous.as_directory() as d:
            run_dir.mkdir(parents=True, exist_ok=True)
            resume = shutil.copy(Path(d) / "checkpoint.pt", run_dir / "checkpoint.pt")
            if (Path(d) / RUN_ID_FILE).is_file():
                shutil.copy(Path(d) / RUN_ID_FILE, run_dir / RUN_ID_FILE)
            if (Path(d) / BEST_FILE).is_file():
                best = json.loads((Path(d) / BEST_FILE).read_text())
    session = trial_session(sweep, ctx.get_trial_id(), config, placement)

    headline = headline_of(cfg.task) or None

    def report(step: int, metrics: dict[str, float], files: dict[str, Path]) -> None:
        # Called after the run has sent `metrics` to the trial's MLflow run (`session`).
        value = metrics.get(sweep.metric)
        if value is not None and not math.isnan(value) and value < best["objective"]:
            best.update({"objective": value, "objective_episode": step})
            if headline in metrics:
                best[f"best/{headline}"] = metrics[headline]
        tracker = session.tracker if session is not None else None
        if tracker is not None:
            if math.isfinite(best["objective"]):
                tracker(step, dict(best), {})
            # Tune may stop this process at this report (ASHA): leave nothing buffered.
            tracker.deliver(TRACKING_WAIT_S)
        # Tune gets finite values only (a diverged evaluation fails the trial by itself, and
        # its NaN would only make Ray's loggers complain); `objective` from the first finite one.
        metrics = {k: v for k, v in {**metrics, **best, "episodes": step}.items()
                   if not isinstance(v, float) or math.isfinite(v)}
        if tracker is not None:
            metrics[RUN_ID_KEY] = tracker.run_id
        if "checkpoint" not in files:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(files["checkpoint"], Path(d) / "checkpoint.pt")
            if tracker is not None:
                (Path(d) / RUN_ID_FILE).write_text(tracker.run_id)
            (Path(d) / BEST_FILE).write_text(json.dumps(best))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    train(cfg, report=report, resume=resume, progress=False, run_dir=run_dir, tracking=session)
