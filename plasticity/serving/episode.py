"""What a served network is asked, in the task's own units, and how it becomes network input.

Covered tasks: those whose class says how a served episode is laid out
(`Task.episode_layout`): `patterns` and `images`, the two "memorise K items, then complete
a degraded one" tasks, and a plugin's task of that shape. (Omniglot needs labelled
images through a conv embedding and the maze an environment loop: neither is served
yet.) An item is a vector of P values (a pattern of -1/+1 bits, or an image's P =
image_size**2 pixels); the query is an item with some values erased (0).

    layout = EpisodeLayout.from_config(cfg)
    episodes [E, K+1, P]  (the K items in the order shown, then the degraded query)
    layout.episode_inputs(episodes) -> [E, T, n_io]  (the task's schedule, gain, bias)
    layout.step_inputs(values [B, P]) -> [B, n_io]   (one network step of live sessions)

The schedule follows the task's sampler exactly, except that each cycle shows the items
in the order given (training shuffles them per cycle: a fixed order is one of those).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from plasticity.errors import PlasticityError
from plasticity.tasks import served_tasks


class RequestError(PlasticityError):
    """A request the server cannot answer; `status` is the HTTP status to send."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class EpisodeLayout:
    """How a task's episode maps onto the network: P values per item, K items, the schedule."""

    task: str
    item_size: int
    """P: values per item (pattern bits or image pixels)."""
    num_items: int
    """K: items memorised per episode."""
    num_cycles: int
    present_steps: int
    gap_steps: int
    test_steps: int
    gain: float
    """The input (and the bias channel) is multiplied by this (patterns' input_gain; 1 for images)."""
    bias: bool
    """One extra input channel that is always `gain`."""
    ternary: bool
    """Items must be -1, 0 or +1 (patterns)."""

    @classmethod
    def from_config(cls, cfg) -> EpisodeLayout:
        """The layout the config's task gives (`Task.episode_layout`), or a one-line error."""
        from plasticity.tasks import TASKS

        layout = TASKS[cfg.task].episode_layout(cfg) if cfg.task in TASKS else None
        if layout is None:
            raise PlasticityError(f"task {cfg.task!r} cannot be served: serving covers {', '.join(served_tasks())}, "
                                  "the tasks that say how a served episode is laid out (Task.episode_layout)")
        return cls(cfg.task, **layout)

    @property
    def n_io(self) -> int:
        return self.item_size + int(self.bias)

    @property
    def steps(self) -> int:
        """T: network steps of one episode."""
        return self.num_items * self.num_cycles * (self.present_steps + self.gap_steps) + self.test_steps

    def describe(self) -> dict:
        """The schedule a live-session client follows (also returned by `GET /info`)."""
        return {"task": self.task, "item_size": self.item_size, "num_items": self.num_items,
                "num_cycles": self.num_cycles, "present_steps": self.present_steps, "gap_steps": self.gap_steps,
                "test_steps": self.test_steps, "episode_steps": self.steps,
                "values": "-1, 0 or +1" if self.ternary else "finite floats"}

    def step_inputs(self, values: Tensor) -> Tensor:
        """Items `[..., P]` -> one step's network input `[..., n_io]` (gain, bias channel)."""
        x = values * self.gain
        if self.bias:
            x = torch.cat([x, torch.full((*x.shape[:-1], 1), self.gain, dtype=x.dtype)], -1)
        return x

    def episode_inputs(self, episodes: Tensor) -> Tensor:
        """Episodes `[E, K+1, P]` -> network input `[E, T, n_io]`: each cycle shows the K
        items in order (present_steps each, then gap_steps of zeros), then the query for
        test_steps."""
        e = episodes.shape[0]
        x = torch.zeros(e, self.steps, self.item_size, dtype=episodes.dtype)
        t = 0
        for _ in range(self.num_cycles):
            for k in range(self.num_items):
                x[:, t:t + self.present_steps] = episodes[:, k].unsqueeze(1)
                t += self.present_steps + self.gap_steps
        x[:, t:t + self.test_steps] = episodes[:, self.num_items].unsqueeze(1)
        return self.step_inputs(x)

    def schedule(self, items: Tensor, query: Tensor) -> Tensor:
        """The steps a live session is sent for one episode: items `[K, P]`, query `[P]`
        -> `[T, P]` (the same order as `episode_inputs`, before gain and bias)."""
        return self.episode_inputs(torch.cat([items, query[None]])[None])[0, :, :self.item_size] / self.gain

    def check_values(self, array: np.ndarray, what: str) -> np.ndarray:
        """Finite numbers (and -1/0/+1 for patterns), else `RequestError` naming the fix."""
        if array.dtype.kind not in "fiu":
            raise RequestError(f"{what} must be numbers, got dtype {array.dtype}: send a JSON array of numbers")
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise RequestError(f"{what} holds {bad} NaN/inf value(s): send finite numbers")
        if self.ternary and not np.isin(array, (-1.0, 0.0, 1.0)).all():
            raise RequestError(f"{what} holds values other than -1, 0, +1: pattern bits are -1/+1, "
                               "erased bits 0")
        return array

    def check_episodes(self, data) -> np.ndarray:
        """A request of whole episodes -> float32 `[E, K+1, P]`."""
        array = _as_array(data, "episodes")
        want = (self.num_items + 1, self.item_size)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[1:] != want or array.shape[0] == 0:
            raise RequestError(f"episodes must have shape [E, {want[0]}, {want[1]}] (the {self.num_items} "
                               f"items in the order shown, then the degraded one; {self.item_size} values each), "
                               f"got {list(array.shape)}")
        return self.check_values(array, "episodes")

    def check_step(self, data) -> np.ndarray:
        """One live-session step -> float32 `[P]`."""
        array = _as_array(data, "input")
        if array.shape != (self.item_size,):
            raise RequestError(f"input must be {self.item_size} numbers (one item), got shape {list(array.shape)}")
        return self.check_values(array, "input")

    def check_steps(self, data, max_steps: int) -> np.ndarray:
        """A sequence of live-session steps -> float32 `[T, P]`, 1 <= T <= `max_steps`."""
        array = _as_array(data, "inputs")
        if array.ndim != 2 or array.shape[1] != self.item_size or not 1 <= array.shape[0] <= max_steps:
            raise RequestError(f"inputs must have shape [T, {self.item_size}] (T steps of one item each, 1 <= T <= "
                               f"{max_steps}), got {list(array.shape)}: send a list of rows of {self.item_size} "
                               "numbers, or several requests")
        return self.check_values(array, "inputs")

    def example(self, seed: int = 0) -> np.ndarray:
        """One episode `[1, K+1, P]` of random items and a degraded copy of the first."""
        g = np.random.default_rng(seed)
        if self.ternary:
            items = np.where(g.random((self.num_items, self.item_size)) < 0.5, -1.0, 1.0)
        else:
            items = g.uniform(-1, 1, (self.num_items, self.item_size))
        query = items[0].copy()
        query[: self.item_size // 2] = 0.0
        return np.concatenate([items, query[None]])[None].astype(np.float32)


def _as_array(data, what: str) -> np.ndarray:
    if hasattr(data, "to_numpy"):  # a pandas DataFrame
        data = data.to_numpy()
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise RequestError(f"{what} must be a rectangular array of numbers: rows of equal length") from None
    if array.dtype == object:
        raise RequestError(f"{what} must be a rectangular array of numbers: rows of equal length, numbers only")
    return array


def bit_error(output, target, erased) -> float:
    """Fraction of wrong signs among the erased bits (the task's `bit_error`)."""
    output, target, erased = (np.asarray(a) for a in (output, target, erased))
    wrong = np.sign(output) != target
    return float(wrong[erased].mean()) if erased.any() else math.nan
