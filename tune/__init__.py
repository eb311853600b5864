"""Sweep service: Ray Tune + Optuna over plasticity hyperparameters, tracked in MLflow.

    python -m tune.sweep --task patterns --num-samples 8 --max-episodes 4000
    ray job submit --working-dir . -- python -m tune.sweep --task patterns ...

`spaces` defines what is searched, `search` the Optuna searcher, `trainable` runs one
trial through `plasticity.train.train`, `sweep` wires Tuner, searcher, scheduler and
MLflow together (its arguments, the run, the command), `stores` holds the storage
defaults, the one-line probes and joining Ray, `progress` and `summary` say what
happened, `show` prints it again from the stores, `report` logs the parent run, `api`
runs a sweep from Python and returns its result (`tune.api.sweep`).

Nothing in `plasticity` imports `tune` (but the `plasticity sweep` command, inside its
function).

May import: plasticity, ray, optuna, mlflow, yaml, tyro, torch, numpy, matplotlib, tqdm

MLflow's usage telemetry is off in every process that imports `tune` (the sweep driver
and each trial worker, which imports `tune.trainable`) unless the user's environment
says otherwise: set MLFLOW_DISABLE_TELEMETRY=false to send it (docs/telemetry.md).
"""

import os

# Before anything here imports mlflow: `import mlflow` starts its telemetry client.
if "MLFLOW_DISABLE_TELEMETRY" not in os.environ and "DO_NOT_TRACK" not in os.environ:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
