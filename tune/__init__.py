"""Sweep service: Ray Tune + Optuna over plasticity hyperparameters, tracked in MLflow.

    python -m tune.sweep --task patterns --num-samples 8 --max-episodes 4000
    ray job submit --working-dir . -- python -m tune.sweep --task patterns ...

`spaces` defines what is searched, `search` the Optuna searcher, `trainable` runs one
trial through `plasticity.train.train`, `sweep` wires Tuner, searcher, scheduler and
MLflow together, `progress` and `summary` say what happened, `report` logs the parent run.

May import: anything in `plasticity`, Ray, Optuna and MLflow. Nothing in `plasticity`
imports `tune` (but the `plasticity sweep` command, inside its function).
"""
