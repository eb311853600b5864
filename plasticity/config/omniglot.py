"""Config and presets of the Omniglot task (N-way 1-shot classification)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from plasticity.config.base import TaskConfig, register_config
from plasticity.config.limits import FRACTION, Positive, Range
from plasticity.errors import ConfigError


@dataclass
class OmniglotConfig(TaskConfig):
    """One-shot classification on Omniglot, N-way 1-shot (the paper's task 3)."""

    task: Literal["omniglot"] = "omniglot"
    """The task (fixed for this config)."""
    preset: str = "reference"
    """Named settings this config started from: `reference` (2018 code: Oja, eta 0.01, lr 3e-5,
    batch 1) or `small` (batch 32, learned eta from 0.5, lr 1e-3: learns in minutes on a CPU)."""
    model: Literal["plastic"] = "plastic"
    """Network type: a conv embedding with a plastic read-out (the only model for this task)."""
    rule: str = "oja"
    """Plasticity rule of the read-out: `oja` (paper) or `hebb` (decaying Hebb)."""
    learn_eta: bool = False
    """Train eta by backprop (the reference keeps it at 0.01)."""
    data_dir: str | None = None
    """Folder with the Omniglot zips or trees; default $PLASTICITY_DATA, else ./data.
    Get them with `plasticity data download omniglot`."""
    sets: str = ""
    """Comma-separated sets to use (images_background, images_evaluation,
    images_background_small1, images_background_small2); empty: every set found."""
    split: Literal["auto", "paper", "random"] = "auto"
    """Character split: `paper` (background set for training/validation, evaluation set for test),
    `random` (seeded split of all characters found), `auto` (paper if both full sets are there)."""
    split_seed: int = 0
    """Seed of the character split (stored with the checkpoint)."""
    val_fraction: Annotated[float, FRACTION] = 0.1
    """Fraction of the characters held out for validation during training."""
    test_fraction: Annotated[float, FRACTION] = 0.2
    """Fraction of the characters held out for testing (`random` split only)."""
    n_way: Annotated[int, Range(2)] = 5
    """Classes per episode (at least 2)."""
    rotations: bool = True
    """Rotate each class by a random multiple of 90 degrees per episode (rotations as new classes)."""
    channels: Positive[int] = 64
    """Channels of each of the 4 conv layers (the embedding size)."""
    label_gain: Positive[float] = 1000.0
    """The one-hot label is multiplied by this and added to the output layer on presentation steps."""

    def neurons(self) -> int:
        # The conv layers' 3x3 x channels x channels kernels dominate.
        return 3 * self.channels + self.n_way

    def steps(self) -> int:
        # n_way presentations and the query.
        return self.n_way + 1

    def step_floats(self) -> int:
        # A 31 x 31 image, the conv activations (31 -> 15 -> 7 -> 3 -> 1) and the label.
        return 31 * 31 + self.channels * (15 * 15 + 7 * 7 + 3 * 3 + 1) + 2 * self.n_way

    def step_work(self) -> int:
        # The 3 x 3 convolutions at 15^2, 7^2, 3^2 and 1 output positions, then the read-out.
        return 9 * self.channels * (15 * 15 + self.channels * (7 * 7 + 3 * 3 + 1)) + self.channels * self.n_way

    def check(self) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave characters for training (< 1)")


register_config(OmniglotConfig, {
    # The 2018 reference (omniglot.py): Oja, eta 0.01, lr 3e-5, batch 1, 5M episodes.
    "reference": dict(rule="oja", eta=0.01, lr=3e-5, batch_size=1, episodes=5_000_000, eval_every=10_000,
                      eval_episodes=1000, save_every=10_000),
    # Batched, with a larger learned eta (0.5: one presentation writes most of the embedding into
    # Hebb) and learning rate: far above chance in minutes on a CPU.
    "small": dict(rule="oja", eta=0.5, learn_eta=True, lr=1e-3, batch_size=32, episodes=300_000, eval_every=6400,
                  eval_episodes=1024, save_every=6400),
})
