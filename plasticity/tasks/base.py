"""What a task provides to its training loop, and the registry of tasks.

Every task is a `Task`: it builds its model and may override the hooks whose defaults
do not fit (data splits, a state stored with checkpoints). A supervised task is an
`EpisodicTask`: it also implements the five methods that define it (`sample`, `inputs`,
`loss`, `metrics`, `figure`) and may give per-episode metrics. The maze (`maze.py`) is
a `Task` played by the A2C loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from plasticity.errors import ConfigError


class Task:
    """What every task has: its model, and hooks with the defaults of a task without data."""

    SPLITS: tuple[str, ...] = ()
    """Data splits the task can draw episodes from (its constructor takes `split=`);
    empty for tasks that draw every episode fresh."""

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self, cfg) -> nn.Module:
        """The network for this task."""
        raise NotImplementedError

    def for_split(self, split: str) -> Task:
        """The same task drawing its episodes from data split `split`."""
        if split != "test":
            raise ConfigError(f"the {self.cfg.task} task has no data splits (every episode is drawn fresh): "
                              f"drop --split {split}")
        return self

    def heldout(self) -> Task:
        """The task that draws the held-out episodes evaluated during training."""
        return self

    def state(self) -> dict:
        """What is stored with a checkpoint (e.g. Omniglot's character split)."""
        return {}

    def check_state(self, state: dict | None, source: str) -> None:
        """Refuse a checkpoint's stored `state` that this task cannot continue from."""

    @classmethod
    def episode_layout(cls, cfg) -> dict | None:
        """How a served episode is laid out (`plasticity serve`, the MLflow model): K items
        of P values shown `num_cycles` times, each for `present_steps` steps then
        `gap_steps` zero steps, then a query item for `test_steps` steps; as the fields of
        `plasticity.serving.EpisodeLayout` but `task`: item_size, num_items, num_cycles,
        present_steps, gap_steps, test_steps, gain, bias (one extra input always `gain`),
        ternary (values must be -1, 0 or +1). None: the task is not served."""
        return None


class EpisodicTask(Task):
    """A supervised task: it builds batches of episodes and scores a model's outputs on them."""

    n_io: int
    """Width of the inputs and outputs `[B, T, n_io]` the model sees and writes."""
    eval_chunk: int | None = None
    """Episodes per no-grad evaluation batch; None: sized from the Hebb tensor."""
    headline: str | None = None
    """The held-out metric (a key of `metrics`) the progress bar shows beside the loss and
    the learning curve plots first; None: the first key `metrics` returns other than `loss`."""

    # What defines the task.
    def sample(self, batch: int, generator: torch.Generator) -> Any:
        """A batch of fresh episodes drawn with `generator`."""
        raise NotImplementedError

    def inputs(self, episode: Any) -> Tensor:
        """The model's input `[B, T, n_io]` for `episode`."""
        raise NotImplementedError

    def loss(self, outputs: Tensor, episode: Any) -> Tensor:
        """Scalar training loss from the model's outputs `[B, T, n_io]`."""
        raise NotImplementedError

    def metrics(self, outputs: Tensor, episode: Any) -> dict[str, float]:
        """Evaluation metrics (unprefixed names) averaged over the batch."""
        raise NotImplementedError

    def figure(self, outputs: Tensor, episode: Any, index: int = 0):
        """A matplotlib figure showing episode `index` and the model's answer."""
        raise NotImplementedError

    def episode_metrics(self, outputs: Tensor, episode: Any) -> dict[str, Tensor] | None:
        """Metrics per episode (`{name: [B]}`), so evaluation can give each a 95% interval;
        None: evaluation averages `metrics` instead."""
        return None

    def build_model(self, cfg) -> nn.Module:
        """The network for this task: by default the recurrent network named by `cfg.model`."""
        from plasticity.models import build_model

        return build_model(cfg, self.n_io)


TASKS: dict[str, type[Task]] = {}
"""Task name -> its class."""


def served_tasks() -> tuple[str, ...]:
    """The registered tasks that say how a served episode is laid out (`Task.episode_layout`)."""
    return tuple(name for name, cls in TASKS.items() if cls.episode_layout.__func__ is not Task.episode_layout.__func__)


def register_task(name: str):
    def deco(cls):
        TASKS[name] = cls
        return cls
    return deco
