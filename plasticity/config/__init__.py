"""Configuration dataclasses: one object flows to the CLI, Ray Tune, MLflow and checkpoints.

    base.py      ModelConfig, TrainConfig, TaskConfig, validate, the registry (CONFIGS, PRESETS)
    limits.py    field limits as part of the type (Positive[int], Range, Literal checks)
    resources.py what a config costs in memory and time; refuses runs and evaluations that cannot fit
    renames.py   old field names and values, still accepted
    patterns.py, images.py, omniglot.py, maze.py   each task's config and presets

    cfg = preset("patterns", "small", episodes=500)
    cfg.to_dict(); PatternsConfig.from_dict(d)

`MazeConfig.check` imports `plasticity.envs` (inside the function) to check a maze.

May import: plasticity.errors, plasticity.rules
May import in functions: plasticity.envs
"""

from plasticity.config.base import (
    CONFIGS,
    MAX_LR,
    PRESETS,
    SEARCH_SPACES,
    ModelConfig,
    TaskConfig,
    TrainConfig,
    preset,
    register_config,
    register_space,
    validate,
)
from plasticity.config.images import ImagesConfig
from plasticity.config.limits import MAX_INT, Range, field_choices, field_range, flag
from plasticity.config.maze import MazeConfig
from plasticity.config.omniglot import OmniglotConfig
from plasticity.config.patterns import PatternsConfig
from plasticity.config.resources import check_evaluation, check_memory, physical_memory

__all__ = ["CONFIGS", "MAX_INT", "MAX_LR", "PRESETS", "SEARCH_SPACES", "ImagesConfig", "MazeConfig", "ModelConfig",
           "OmniglotConfig", "PatternsConfig", "Range", "TaskConfig", "TrainConfig", "check_evaluation", "check_memory",
           "field_choices", "field_range", "flag", "physical_memory", "preset", "register_config", "register_space",
           "validate"]
