"""What a task's way of training gives the run: the `Algorithm` protocol and its registry.

Each task's config names its algorithm (`type(cfg).trainer`): `episodic` (supervised
episodes, `episodic.py`) or `a2c` (the maze's actor-critic, `a2c.py`). An algorithm
module registers its class with `@register_algorithm`; `plasticity.train.run.train`
builds it from the config (after seeding), and `plasticity.train.loop.run_loop` drives it.
Everything else a run does (its folder, resuming, random streams, signals, the tracker)
is the run's, once, for every algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from plasticity.errors import ConfigError


class Algorithm(Protocol):
    """A task's training algorithm, built for one run: `Algorithm(cfg, device, progress)`
    builds the task, the model (on `device`) and the algorithm's own random streams."""

    name: ClassVar[str]
    """The `trainer` of the configs it trains."""
    task: Any
    """The task (`plasticity.tasks`): `check_state` and `state` are its checkpoint's part."""
    model: torch.nn.Module

    def prepare(self) -> None:
        """One-time work before the training clock starts (e.g. building the fused C++
        kernels), once the run folder and its tracker are open."""

    def step(self, episodes: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Run `episodes` fresh training episodes; return (loss to backpropagate, per-episode
        statistics such as `train/loss`, averaged by the loop until the next evaluation)."""

    def evaluate(self, episode: int, run_dir: Path) -> tuple[dict[str, float], dict[str, Path]]:
        """Score the model on the held-out episodes: (prefixed metrics, figure files)."""

    def generators(self) -> dict[str, torch.Generator]:
        """The algorithm's own random streams (saved and restored with the checkpoint)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Anything else the checkpoint must hold (e.g. a data split)."""

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after an evaluation."""

    def finish(self, history: list[dict], run_dir: Path) -> None:
        """Called once at the end of a completed run (e.g. to draw the learning curve)."""

    @staticmethod
    def evaluate_checkpoint(path, config_cls, **kwargs) -> dict:
        """Score a checkpoint on fresh episodes (`plasticity.train.evaluate_checkpoint`)."""


ALGORITHMS: dict[str, type[Algorithm]] = {}
"""Trainer name (`TaskConfig.trainer`) -> the algorithm class that trains it."""


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Make `cls` the algorithm of every config whose `trainer` is `cls.name`."""
    ALGORITHMS[cls.name] = cls
    return cls


def algorithm_for(cfg_or_cls) -> type[Algorithm]:
    """The algorithm class of a config (instance or class)."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    if cls.trainer not in ALGORITHMS:
        raise ConfigError(f"{cls.__name__} names the trainer {cls.trainer!r}, which no algorithm registers: "
                          f"register one with plasticity.train.algorithm.register_algorithm "
                          f"(known: {', '.join(ALGORITHMS)})")
    return ALGORITHMS[cls.trainer]
