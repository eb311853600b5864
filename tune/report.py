"""The sweep's MLflow parent run: closes each child run when Ray ends its trial, and at
the end logs each trial's best checkpoint as a model, a summary table and a plot of the
objective against eta per rule, and registers the best model.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune import Callback

from plasticity.config import CONFIGS
from plasticity.errors import error_line
from plasticity.plots import save_figure
from plasticity.redact import redact
from plasticity.tracking.mlflow import MlflowTracker
from plasticity.train import model_from_checkpoint
from tune.summary import TOP, train_command
from tune.trainable import RUN_ID_KEY


class TrialCounter(Callback):
    """Counts what happened to the trials in this driver session: started, finished,
    retried (restarted from their last checkpoint after a failure, e.g. a lost node) and
    failed for good. `lost` = started trials that neither finished nor failed."""

    def __init__(self):
        self.started: set[str] = set()
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.retries: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished.add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed.add(trial.trial_id)

    def counts(self) -> dict[str, int]:
        return {"started": len(self.started), "finished": len(self.finished), "retried": len(self.retries),
                "retries": sum(self.retries.values()), "failed": len(self.failed),
                "lost": len(self.started - self.finished - self.failed)}


class _CloseChildRuns(TrialCounter):
    """Marks a trial's MLflow run FINISHED/FAILED when Ray ends the trial (also when
    ASHA stops it early, which ends the trial's process before it can do so itself), at
    that moment (its own end time), with a tag `ended` (completed / stopped early /
    failed), the metric `episodes_run`, and its retry count."""

    def __init__(self, tracker: SweepTracker, max_episodes: int):
        super().__init__()
        self.tracker, self.max_episodes = tracker, max_episodes

    def on_trial_recover(self, iteration, trials, trial, **info):
        super().on_trial_recover(iteration, trials, trial, **info)
        self.tracker.tag_child(trial.trial_id, "retries", str(self.retries[trial.trial_id]), _run_id(trial))

    def on_trial_complete(self, iteration, trials, trial, **info):
        super().on_trial_complete(iteration, trials, trial, **info)
        episodes = int((trial.last_result or {}).get("episodes", 0))
        ended = "completed" if episodes >= self.max_episodes else "stopped early"
        self.tracker.close_child(trial.trial_id, "FINISHED", ended, episodes, _run_id(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        super().on_trial_error(iteration, trials, trial, **info)
        self.tracker.close_child(trial.trial_id, "FAILED", "failed", int((trial.last_result or {}).get("episodes", 0)),
                                 _run_id(trial))


def _run_id(trial) -> str | None:
    """The trial's MLflow run id, as it reported it (none before its first report)."""
    return (trial.last_result or {}).get(RUN_ID_KEY) or None


@dataclass
class SweepTracker:
    parent: MlflowTracker
    experiment_id: str
    name: str
    figures: list[str] = field(default_factory=list)  # Optuna's plots, logged by summarise

    @property
    def run_id(self) -> str:
        return self.parent.run_id

    @classmethod
    def open(cls, uri: str, experiment: str, name: str, params: dict) -> SweepTracker:
        parent = MlflowTracker.open(uri, experiment, name, params, tags={"sweep": name, "role": "sweep"})
        exp_id = parent.client.get_run(parent.run_id).info.experiment_id
        # The experiment's kind, for MLflow UIs that read it. MLflow 3.17's UI ignores it
        # (seen in Chromium: it opens the GenAI view until its "Model training" switch or
        # ?workflowType=machine_learning says otherwise), so the printed URL carries that.
        parent.attempt(parent.client.set_experiment_tag, exp_id, "mlflow.experimentKind", "custom_model_development")
        return cls(parent, exp_id, name)

    def callback(self, max_episodes: int) -> TrialCounter:
        return _CloseChildRuns(self, max_episodes)

    def child_run(self, trial_id: str, run_id: str | None = None):
        """The trial's MLflow run: by the id the trial reported (one lookup by key), else
        searched by its tags (a trial that never reported; on the server that search reads
        the tags of every run of the experiment, so once per trial would grow as N^2)."""
        if run_id:
            return self.parent.client.get_run(run_id)
        runs = self.parent.client.search_runs(
            [self.experiment_id], f"tags.sweep = '{self.name}' and tags.trial_id = '{trial_id}'", max_results=1)
        return runs[0] if runs else None

    def _child(self, trial_id: str, run_id: str | None = None, tries: int = 6, wait_s: float = 5.0):
        """The trial's run, waiting out a short tracking-server outage (these calls run in
        Tune's callbacks: an exception there would stop the whole sweep)."""
        for i in range(tries):
            try:
                return self.child_run(trial_id, run_id)
            except Exception:  # noqa: BLE001 - the server is down or restarting
                if i + 1 < tries:
                    time.sleep(wait_s)
        self.parent.attempt(self.child_run, trial_id, run_id)  # warns once
        return None

    def close_child(self, trial_id: str, status: str, ended: str, episodes: int, run_id: str | None = None) -> None:
        run = self._child(trial_id, run_id)
        if run is None:
            return
        client, run_id = self.parent.client, run.info.run_id
        self.parent.attempt(client.set_tag, run_id, "ended", ended)
        self.parent.attempt(client.log_metric, run_id, "episodes_run", episodes, step=episodes)
        if run.info.status == "RUNNING":
            self.parent.attempt(client.set_terminated, run_id, status)
        self._log_link(run)

    def _log_link(self, run) -> None:
        """The run's link, in the sweep's log, where MLflow was told not to print it
        (`MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`, set by the quiet view; it prints links
        for tracking servers only)."""
        if os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "").lower() not in ("true", "1"):
            return
        if not self.parent.uri.startswith(("http://", "https://")):
            return
        url = f"{redact(self.parent.uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run.info.run_id}"
        logging.getLogger("mlflow").info(f"View run {run.info.run_name} at: {url}")

    def tag_child(self, trial_id: str, key: str, value: str, run_id: str | None = None) -> None:
        run = self._child(trial_id, run_id)
        if run is not None:
            self.parent.attempt(self.parent.client.set_tag, run.info.run_id, key, value)

    def summarise(self, results, args, sweep, counts: dict[str, int] | None = None, study=None) -> None:
        rows = trial_rows(results, args.metric)
        if study is not None:
            self._log_study_figures(study, args.metric)
        with tempfile.TemporaryDirectory() as d:
            table = Path(d) / "trials.csv"
            with open(table, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
                writer.writeheader()
                writer.writerows(rows)
            (Path(d) / "trials.md").write_text(markdown_table(rows))
            figure = Path(d) / "objective_vs_eta_by_rule.png"
            save_figure(objective_plot(rows, args.metric), figure)
            for path in (table, Path(d) / "trials.md", figure):
                self.parent.attempt(self.parent.client.log_artifact, self.run_id, str(path), "summary")
        best = self._log_trial_models(results, args)
        if best is not None:
            self._register(best, args)
        finished = [r for r in rows if r["status"] == "ok"]
        if finished:
            best = min(finished, key=lambda r: r["objective"])
            self.parent(0, {"best/objective": best["objective"], "trials/finished": len(finished),
                            "trials/total": len(rows)}, {})
        if counts:
            # This driver session's trial events (started, retried, failed, lost, ...).
            self.parent(0, {f"trials/session_{k}": v for k, v in counts.items()}, {})
        self.parent.finish()

    def _log_study_figures(self, study, metric: str) -> None:
        """Optuna's own plots of the study (tune/figures.py), at the top of the parent run's
        artifacts: the run's Artifacts tab, then one click on a file, shows each."""
        from tune.figures import study_figures

        with tempfile.TemporaryDirectory() as d:
            for name, fig in study_figures(study, metric).items():
                save_figure(fig, Path(d) / name)
                if self.parent.attempt(self.parent.client.log_artifact, self.run_id, str(Path(d) / name)):
                    self.figures.append(name)

    def describe(self, view, answer: str) -> None:
        """The parent run's description (MLflow's run note, shown first on the run's page):
        the best trial and the command that trains it again (first: the UI shows a
        description's first lines), the objective against eta drawn inline, then the
        sweep's `answer` as the terminal printed it (`tune.summary.show(view)`)."""
        best = view.best
        lines = [f"**Sweep {self.name}**" + (f", best: {best.label}, {view.metric} {best.objective:.4g}; train it "
                                             "again with:" if best else ": no trial finished")]
        command = train_command(view, best) if best else None
        if command:
            lines += ["", "```", command, "```"]
        lines.append("")
        if "objective_vs_eta.png" in self.figures:
            lines += [f"![objective against eta]({artifact_url(self.run_id, 'objective_vs_eta.png')})", ""]
        lines += ["The sweep's answer as `plasticity sweep` printed it:", "", "```text", answer.strip(), "```", ""]
        if self.figures:
            lines.append("Figures (Optuna's, in this run's **Artifacts** tab): "
                         + ", ".join(f"`{f}`" for f in self.figures) + "; the table of every trial: "
                         "`summary/trials.csv`.")
        note = "\n".join(lines)
        if len(note) > NOTE_MAX:  # MLflow keeps tag values up to 8,000 characters
            note = note[:NOTE_MAX - 40] + "\n```\n(cut: see summary/trials.md)"
        self.parent.attempt(self.parent.client.set_tag, self.run_id, "mlflow.note.content", note)

    def _log_trial_models(self, results, args, keep: int = TOP) -> dict | None:
        """Log the best checkpoint (the one at its best evaluation: its score) of each of
        the `keep` best trials (those the summary table shows) as a model in its child run;
        return what the sweep's best trial's looks like. Every trial's last checkpoint is
        in its run's artifacts (run/checkpoint.pt) either way. A model costs about a second
        of the driver's time after the last trial (MLflow reads each metric's history to
        link it): for all of 1,000 trials that would be a quarter of an hour
        (docs/capacity.md)."""
        from plasticity.serving.mlflow_pyfunc import episode_flavor

        scored = [(ckpt, result) for result in results
                  if result.metrics and (ckpt := _best_checkpoint(result, args.metric)) is not None]
        scored.sort(key=lambda cr: cr[0][1])
        best = None
        for (checkpoint, value, metrics), result in scored[:keep]:
            run = self.child_run(result.metrics.get("trial_id", ""), result.metrics.get(RUN_ID_KEY))
            if run is None:
                continue
            child = MlflowTracker(self.parent.client, run.info.run_id, self.parent.uri)
            with checkpoint.as_directory() as d:
                model, _, _ = model_from_checkpoint(Path(d) / "checkpoint.pt", CONFIGS[args.task])
                # The checkpoint gives the model its episode pyfunc (plasticity.serving).
                uri = child.log_model(model, checkpoint=Path(d) / "checkpoint.pt", flavor=episode_flavor)
            # Logging a model reopens the run and closes it "now" as FINISHED: give it back
            # its own status and end time.
            self.parent.attempt(self.parent.client.set_terminated, run.info.run_id, run.info.status or "FINISHED",
                                end_time=run.info.end_time)
            if best is None or value < best["score"]:
                best = {"uri": uri, "score": value, "episode": int(metrics.get("episodes", 0)), "run": run}
        return best

    def _register(self, best: dict, args) -> None:
        """Register the best trial's model; the version says its score, its checkpoint's
        episode, its trial and its settings."""
        import mlflow

        mlflow.set_tracking_uri(self.parent.uri)
        run = best["run"]
        # register_model prints its news to stderr itself; they belong in the sweep's log.
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            version = mlflow.register_model(best["uri"], args.register_model).version
        for line in said.getvalue().strip().splitlines():
            logging.getLogger("mlflow").info(line)
        client, name = self.parent.client, args.register_model
        trial = run.data.tags.get("trial", run.data.tags.get("trial_id", ""))
        tags = {"score": f"{best['score']:.6g}", "metric": args.metric, "score_rule": "best evaluation",
                "checkpoint_episode": str(best["episode"]), "trial": trial, "sweep": self.name,
                "run_id": run.info.run_id}
        for key, value in tags.items():
            self.parent.attempt(client.set_model_version_tag, name, version, key, value)
        settings = ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items()))
        self.parent.attempt(client.update_model_version, name, version,
                            description=f"Best trial {trial} of sweep {self.name}: {args.metric} {best['score']:.6g} "
                                        f"(its best evaluation), checkpoint at episode {best['episode']}. "
                                        f"Settings: {settings}")
        client.set_tag(self.run_id, "best_model", f"{name}/{version}")


NOTE_MAX = 7_900


def artifact_url(run_id: str, path: str) -> str:
    """An artifact's address relative to the MLflow UI's page (the UI fetches run
    artifacts from this route itself), so the note's picture shows on any server."""
    return f"get-artifact?path={path}&run_uuid={run_id}"


def _best_checkpoint(result, metric: str):
    """(checkpoint, value, metrics) with the lowest `metric` among the trial's kept
    checkpoints (the best is always kept: CheckpointConfig scores them by it)."""
    scored = [(c, m.get(metric), m) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    scored = [(c, v, m) for c, v, m in scored if not math.isnan(v)]
    return min(scored, key=lambda cvm: cvm[1]) if scored else None


def trial_rows(results, metric: str) -> list[dict]:
    rows = []
    for result in results:
        m, cfg = result.metrics or {}, result.config or {}
        rows.append({
            "trial_id": m.get("trial_id", ""),
            "status": "ok" if result.error is None else "error",
            # The trial's score: its best evaluation of the metric (tune/trainable.py).
            "objective": m.get("objective", math.nan) if math.isfinite(m.get("objective", math.nan)) else math.nan,
            "episodes": m.get("episodes", 0),
            # The task's own held-out metrics (the last evaluation's), whatever the task.
            **{k: v for k, v in m.items() if k.startswith("eval/") and not k.endswith("_ci95")},
            "model/params": m.get("model/params", 0),
            **{k: v for k, v in sorted(cfg.items())},
            "error": "" if result.error is None else error_line(result.error, last=True),
        })
    return rows


def columns(rows: list[dict]) -> list[str]:
    """Every key of every row, in first-seen order (conditional params are not in all rows)."""
    return list(dict.fromkeys(k for r in rows for k in r)) or ["trial_id"]


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "no trials\n"
    keys = columns(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def objective_plot(rows: list[dict], metric: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for rule in sorted({str(r.get("rule", "?")) for r in rows}):
        pts = [(r["eta"], r["objective"]) for r in rows
               if str(r.get("rule", "?")) == rule and "eta" in r and not math.isnan(r["objective"])]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=rule)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eta (initial plasticity rate)")
    ax.set_ylabel(f"{metric} (best evaluation of each trial)")
    ax.set_title("objective against eta, per rule")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no finished trial, nothing to label
        ax.legend()
    fig.tight_layout()
    return fig
