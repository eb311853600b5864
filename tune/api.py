"""Sweeps from Python (notebooks, scripts): one call runs a sweep with the settings of
`plasticity sweep` and returns what it found, read back from its stores.

    from tune.api import sweep

    result = sweep("patterns", num_samples=8, max_episodes=4000, space={"eta": {...}})
    result.best.score, result.best.params, result.best.config   # the best trial
    result.best.checkpoint, result.best.run_id                   # its checkpoint.pt, its MLflow run
    result.train_command                                         # `plasticity train ...` that trains it again
    result.trials_dataframe()                                    # every trial, one row each (pandas)
    result.grid                                                  # Ray Tune's ResultGrid

As Ray Tune's `ResultGrid.get_best_result` and Optuna's `study.best_trial` /
`study.trials_dataframe()`: the best trial is the one with the lowest score (its best
evaluation of `metric`, as in the printed summary), and the table is sorted best first.
Every keyword is a field of `tune.sweep.SweepArgs` (the flags of `plasticity sweep`, with
`_` for `-`); `space` may also be a dict in the format of `tune/spaces.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from plasticity.errors import ConfigError
from plasticity.plugins import load_all
from tune.result import SweepResult, TrialResult, result_of
from tune.sweep import SweepArgs, run

__all__ = ["SweepResult", "TrialResult", "result_of", "run", "sweep"]


def _settings(task: str, space, plugins, settings: dict[str, Any]) -> SweepArgs:
    known = {f.name for f in dataclasses.fields(SweepArgs)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown sweep setting(s) {', '.join(unknown)}: the settings are the fields of "
                          f"tune.sweep.SweepArgs ({', '.join(sorted(known - {'task', 'space'}))})")
    load_all(list(plugins))
    args = SweepArgs(task=task, **settings)
    args.space = space if space is None or isinstance(space, dict) else str(space)
    return args


def sweep(task: str = "patterns", *, space: dict | str | Path | None = None, plugins=(), **settings) -> SweepResult:
    """Run a sweep of `task` (checked first, as `plasticity sweep` checks it) and return its
    result. `space`: a search space (a dict, or a YAML file); None: the task's own.
    `plugins`: modules to load first (as `--plugin`). Every other keyword is a
    `plasticity sweep` setting (`num_samples=8`, `max_episodes=4000`, `tracking_uri=...`,
    `no_tracking=True`, `resume=True`, ...). Bad settings raise `ConfigError` (one line)."""
    return run(_settings(task, space, plugins, settings))
