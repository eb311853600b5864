"""Training, one way for every task: `train(cfg, report) -> TrainResult`.

    from plasticity.config import preset
    from plasticity.train import train
    result = train(preset("patterns", "small"), report=lambda step, metrics, files: print(step, metrics))

Each task's config names its algorithm (`type(cfg).trainer`); `train` runs it inside the
one run lifecycle (`run.py`) that the CLI, the sweep trials and library users share.

    run.py         the run from start to end: resume, run folder, random streams, signals,
                   the tracker, the stop line; `train`
    loop.py        the schedule: steps, evaluations, when to checkpoint, progress bar, reports
    algorithm.py   what an algorithm gives the run (`Algorithm`) and their registry
    episodic.py    supervised episodes; a2c.py the maze's actor-critic (each registers itself)
    signals.py     which signals stop a run, and how (`SignalPlan`, `Interrupted`)
    common.py      what they share: devices, loading weights, `plastic_summary`, `model_from_checkpoint`
    checkpoint.py  the file (atomic, weights_only); optim.py the optimiser (eta's own learning rate)

May import: plasticity.errors, plasticity.config, plasticity.nn, plasticity.models, plasticity.agents,
    plasticity.envs, plasticity.tasks, plasticity.plots, torch, numpy, tqdm
"""

from plasticity.train import a2c, episodic
from plasticity.train.algorithm import ALGORITHMS, Algorithm, algorithm_for, register_algorithm
from plasticity.train.checkpoint import load_checkpoint, save_checkpoint
from plasticity.train.common import Report, TrainingDiverged, model_from_checkpoint
from plasticity.train.episodic import evaluate
from plasticity.train.run import Tracking, TrainResult, preflight, seed_everything, train


def evaluate_checkpoint(path, config_cls, **kwargs) -> dict:
    """Score a checkpoint of a `config_cls` run on fresh episodes with its task's algorithm
    (the keyword arguments of `plasticity.train.episodic.evaluate_checkpoint`)."""
    return algorithm_for(config_cls).evaluate_checkpoint(path, config_cls, **kwargs)


__all__ = ["ALGORITHMS", "Algorithm", "Report", "TrainResult", "TrainingDiverged", "Tracking", "a2c",
           "episodic", "evaluate", "evaluate_checkpoint", "load_checkpoint", "model_from_checkpoint", "preflight",
           "register_algorithm", "save_checkpoint", "seed_everything", "train"]
