"""What a sweep found, read back from its stores: its trials (best first), the best
trial, the command that trains it again. `plasticity sweep` (`tune.sweep.run`) and the
Python API (`tune.api.sweep`) both return a `SweepResult`.

May import in functions: pandas
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.summary import SweepView, collect, results_folder, show, train_command


@dataclass
class TrialResult:
    """One trial of a sweep."""

    label: str
    """`t003`: the Optuna trial number (the child run's name starts with it)."""
    trial_id: str
    """Ray Tune's trial id."""
    score: float
    """Its best evaluation of the sweep's metric (NaN: it never evaluated)."""
    state: str
    """`completed`, `stopped early`, `failed`, `running` (retries appended)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The values the search drew for it."""
    config: dict[str, Any] | None = None
    """Its whole training config (its run folder's config.json), None if it has none."""
    checkpoint: Path | None = None
    """Its last checkpoint.pt, None if it saved none."""
    run_id: str | None = None
    """Its MLflow run, None without tracking."""


@dataclass
class SweepResult:
    """What a sweep found: its trials (best first), the best, how to train it again."""

    name: str
    task: str
    metric: str
    trials: list[TrialResult]
    view: SweepView
    """The stores' account (`tune.summary`), as `plasticity sweep show NAME` prints it."""
    grid: Any = None
    """Ray Tune's ResultGrid of this run of the sweep."""

    @property
    def best(self) -> TrialResult | None:
        scored = [t for t in self.trials if math.isfinite(t.score)]
        return min(scored, key=lambda t: t.score) if scored else None

    @property
    def train_command(self) -> str | None:
        """The `plasticity train` command of the best trial's settings (flags where they
        differ from the preset), as the printed summary gives it."""
        best = self.best
        if best is None:
            return None
        # Its settings come from its MLflow run, or without MLflow from its own folder
        # (tune.summary.collect).
        row = next((r for r in self.view.rows if r.trial_id == best.trial_id), None)
        return train_command(self.view, row) if row is not None else None

    def summary(self) -> str:
        """The block the sweep printed when it ended (read again from the stores)."""
        return show(self.view)

    def trials_dataframe(self):
        """Every trial, one row each, best first: label, trial_id, score, state, run_id,
        checkpoint, then `params_<name>` for each drawn value (Optuna's naming)."""
        import pandas as pd

        rows = []
        for t in self.trials:
            rows.append({"label": t.label, "trial_id": t.trial_id, "score": t.score, "state": t.state,
                         "run_id": t.run_id, "checkpoint": str(t.checkpoint) if t.checkpoint else None,
                         **{f"params_{k}": v for k, v in t.params.items()}})
        return pd.DataFrame(rows)


def result_of(args, grid=None, view: SweepView | None = None) -> SweepResult:
    """The result of the sweep `args` (a `tune.sweep.SweepArgs`) names, from its stores (and the ResultGrid, when this
    process ran it)."""
    from plasticity.tracking.mlflow import default_tracking_uri

    if view is None:
        tracking = None if args.no_tracking else (args.tracking_uri or default_tracking_uri())
        view = collect(args.name, args.storage, tracking, args.experiment,
                       results=results_folder(args.storage_path, args.name))
    by_id = {}
    for result in grid or ():
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id:
            by_id[trial_id] = result
    trials = []
    for row in view.rows:
        result = by_id.get(row.trial_id)
        params, config, checkpoint = {}, None, None
        if result is not None:
            params = {k: v for k, v in (result.config or {}).items() if not k.startswith("__")}
            run = Path(result.path) / "run"
            if (run / "config.json").is_file():
                config = json.loads((run / "config.json").read_text())
            if (run / "checkpoint.pt").is_file():
                checkpoint = run / "checkpoint.pt"
        trials.append(TrialResult(label=row.label, trial_id=row.trial_id, score=row.objective, state=row.ended,
                                  params=params, config=config, checkpoint=checkpoint, run_id=row.run_id))
    return SweepResult(name=args.name, task=view.task, metric=view.metric, trials=trials, view=view, grid=grid)
