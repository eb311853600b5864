"""What a supervised episodic task provides to the training loop, and the registry."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class EpisodicTask(Protocol):
    """A task builds batches of episodes and scores a model's outputs on them."""

    n_io: int
    """Width of the inputs and outputs `[B, T, n_io]` the model sees and writes."""

    def sample(self, batch: int, generator: torch.Generator) -> Any:
        """A batch of fresh episodes drawn with `generator`."""

    def inputs(self, episode: Any) -> Tensor:
        """The model's input `[B, T, n_io]` for `episode`."""

    def loss(self, outputs: Tensor, episode: Any) -> Tensor:
        """Scalar training loss from the model's outputs `[B, T, n_io]`."""

    def metrics(self, outputs: Tensor, episode: Any) -> dict[str, float]:
        """Evaluation metrics (unprefixed names) averaged over the batch."""

    def figure(self, outputs: Tensor, episode: Any, index: int = 0):
        """A matplotlib figure showing episode `index` and the model's answer."""


TASKS: dict[str, type] = {}


def register_task(name: str):
    def deco(cls):
        TASKS[name] = cls
        return cls
    return deco
