"""Config and presets of the image task (CIFAR-10 memorisation and completion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from plasticity.config.base import TaskConfig, register_config
from plasticity.config.limits import NonNegative, Positive


@dataclass
class ImagesConfig(TaskConfig):
    """Natural-image memorisation and completion on CIFAR-10 (the paper's task 2)."""

    task: Literal["images"] = "images"
    """The task (fixed for this config)."""
    preset: str = "reference"
    """Named settings this config started from: `reference` (2018 code: 32x32, 201 steps),
    `small` (16x16 images, 51 steps: minutes on a CPU)."""
    data_dir: str | None = None
    """Folder with the CIFAR-10 python batches (or their cifar-10-batches-py/ folder);
    default $PLASTICITY_DATA, else ./data. Get them with `plasticity data download cifar10`."""
    image_size: Literal[32, 16, 8] = 32
    """Side of the grayscale images fed to the network (CIFAR-10's 32, or 16/8 by average pooling)."""
    num_images: Positive[int] = 3
    """Images to memorise per episode."""
    num_cycles: Positive[int] = 3
    """Times the whole set is shown, in a new random order each time."""
    present_steps: Positive[int] = 20
    """Steps each image is clamped onto the network."""
    gap_steps: NonNegative[int] = 2
    """Zero-input steps after each presentation."""
    test_steps: Positive[int] = 3
    """Steps the half-erased test image is shown; the loss is read at the last one."""
    erase_half: Literal["random", "top", "bottom"] = "random"
    """Which half of the test image is zeroed: top or bottom at random (reference), or always one."""
    bias_neuron: bool = True
    """Add one neuron clamped to 1."""
    input_mode: Literal["clamp", "add"] = "clamp"
    """`clamp`: neurons with a non-zero input take that value (reference); `add`: the input is
    added to the pre-activation."""

    def neurons(self) -> int:
        return super().neurons() + self.image_size ** 2 + int(self.bias_neuron)

    def steps(self) -> int:
        return self.num_images * self.num_cycles * (self.present_steps + self.gap_steps) + self.test_steps


register_config(ImagesConfig, {
    # The 2018 reference code (images.py): 3 images x 3 cycles x (20 + 2) steps + 3 test steps.
    "reference": dict(image_size=32, num_images=3, num_cycles=3, present_steps=20, gap_steps=2, test_steps=3,
                      lr=1e-4, batch_size=1, episodes=3000, eval_every=50, eval_episodes=32, save_every=100),
    # 16x16 images (257 neurons) and shorter episodes (51 steps): learns in minutes on a CPU.
    "small": dict(image_size=16, num_images=3, num_cycles=2, present_steps=6, gap_steps=2, test_steps=3,
                  lr=1e-3, batch_size=8, episodes=4000, eval_every=200, eval_episodes=64, save_every=400),
})
