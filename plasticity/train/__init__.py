"""Training loops that report through a callable: `train(cfg, report)`.

Each task's config names its loop (`type(cfg).trainer`): `episodic` (supervised
episodes, `plasticity.train.episodic`) or another registered in `TRAINERS`. Every loop
module provides `train(cfg, report, *, resume, progress, run_dir) -> TrainResult`,
`preflight(cfg)` and `evaluate_checkpoint(path, config_cls, *, episodes, seed, figure,
device, split, data_dir)`. Rebuilding a model from a checkpoint is the same for every
task (`model_from_checkpoint`: the task builds its model).

    loop.py        the one loop: schedule, evaluation, checkpoints, signals, progress, reports
    episodic.py    the supervised algorithm; a2c.py the maze's actor-critic algorithm
    common.py      run folders, resuming, devices, model_from_checkpoint; checkpoint.py the file
    optim.py       the optimiser (eta's own learning rate)

May import: `plasticity.errors`, `config`, `nn`, `models`, `agents`, `envs`, `tasks`, `plots`.
"""

from importlib import import_module
from types import ModuleType

from plasticity.train.checkpoint import load_checkpoint, save_checkpoint
from plasticity.train.common import Report, TrainingDiverged, model_from_checkpoint, seed_everything
from plasticity.train.episodic import TrainResult, evaluate

TRAINERS: dict[str, str] = {"episodic": "plasticity.train.episodic", "a2c": "plasticity.train.a2c"}
"""Trainer name -> module implementing it (imported when first used)."""


def trainer_module(cfg_or_cls) -> ModuleType:
    """The training-loop module for a config (instance or class)."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    return import_module(TRAINERS[cls.trainer])


def evaluate_checkpoint(path, config_cls, **kwargs) -> dict:
    """Score a checkpoint of a `config_cls` run on fresh episodes with its task's loop (the
    keyword arguments of `plasticity.train.episodic.evaluate_checkpoint`)."""
    return trainer_module(config_cls).evaluate_checkpoint(path, config_cls, **kwargs)


def preflight(cfg) -> None:
    """Fail fast, with one `PlasticityError`, on what would stop training at its start (a
    missing or corrupt data file, an impossible maze): call before opening a tracking run."""
    trainer_module(cfg).preflight(cfg)


def train(cfg, report: Report | None = None, **kwargs) -> TrainResult:
    """Train the model described by `cfg` with its task's loop; see `plasticity.train.episodic`."""
    return trainer_module(cfg).train(cfg, report, **kwargs)


__all__ = ["TRAINERS", "Report", "TrainResult", "TrainingDiverged", "evaluate", "evaluate_checkpoint",
           "load_checkpoint", "model_from_checkpoint", "preflight", "save_checkpoint", "seed_everything", "train",
           "trainer_module"]
