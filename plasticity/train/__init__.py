"""Training loops that report through a callable: `train(cfg, report)`."""

from plasticity.train.checkpoint import load_checkpoint, save_checkpoint
from plasticity.train.common import Report, TrainingDiverged, seed_everything
from plasticity.train.episodic import TrainResult, evaluate, model_from_checkpoint, train

__all__ = ["Report", "TrainResult", "TrainingDiverged", "evaluate", "load_checkpoint",
           "model_from_checkpoint", "save_checkpoint", "seed_everything", "train"]
