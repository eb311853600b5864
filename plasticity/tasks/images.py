"""Natural-image memorisation and completion (Miconi et al. 2018, task 2).

Each episode: `num_images` grayscale CIFAR-10 images, each clamped onto the network
for `present_steps` steps followed by `gap_steps` zero steps, the whole set shown
`num_cycles` times in a new random order; then one of them with its top or bottom half
zeroed is shown for `test_steps` steps. The network must output the whole image at the
last step (squared error over every pixel). Training episodes draw images from the
training batches, held-out episodes from batch 5, `plasticity evaluate` from the test
batch, so scores are on images the network never saw.

    task = ImageTask(cfg); ep = task.sample(4, generator)
    out, _ = model(task.inputs(ep)); task.loss(out, ep), task.metrics(out, ep)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from plasticity.data import DataError, load_cifar10
from plasticity.tasks.base import EpisodicTask, register_task

SPLITS = {"train": "train", "validation": "validation", "test": "test"}


@dataclass
class ImageEpisode:
    """A batch of image episodes; P = image_size**2 pixels, K = num_images."""

    inputs: Tensor
    """`[B, T, n_io]` clamped values (0 = not clamped), bias channel last if any."""
    images: Tensor
    """`[B, K, P]` the images shown."""
    target: Tensor
    """`[B, P]` the whole test image."""
    cue: Tensor
    """`[B, P]` the half-erased test image that was shown."""
    erased: Tensor
    """`[B, P]` bool, True on the erased half."""


def downsample(images: Tensor, size: int) -> Tensor:
    """`[N, 32, 32]` -> `[N, size, size]` by average pooling (size divides 32)."""
    if size == images.shape[-1]:
        return images
    return F.avg_pool2d(images.unsqueeze(1), images.shape[-1] // size).squeeze(1)


@register_task("images")
class ImageTask(EpisodicTask):
    SPLITS = SPLITS
    """Data splits this task can draw from (make_task builds one without loading the others)."""

    @classmethod
    def episode_layout(cls, cfg) -> dict:
        return dict(item_size=cfg.image_size ** 2, num_items=cfg.num_images, num_cycles=cfg.num_cycles,
                    present_steps=cfg.present_steps, gap_steps=cfg.gap_steps, test_steps=cfg.test_steps,
                    gain=1.0, bias=bool(cfg.bias_neuron), ternary=False)

    def __init__(self, cfg, split: str = "train", images: Tensor | None = None):
        self.cfg, self.split = cfg, split
        self.side = cfg.image_size
        self.size = self.side * self.side
        self.n_io = self.size + int(cfg.bias_neuron)
        self.steps = cfg.num_images * cfg.num_cycles * (cfg.present_steps + cfg.gap_steps) + cfg.test_steps
        if images is None:
            data = load_cifar10(cfg.data_dir, SPLITS[split])
            images = downsample(torch.from_numpy(data.images), self.side).reshape(len(data), -1)
        if len(images) < cfg.num_images:
            raise DataError(f"the CIFAR-10 {split} split has {len(images)} images, an episode needs "
                            f"{cfg.num_images}: check --data-dir")
        self.images = images

    def for_split(self, split: str) -> ImageTask:
        """The same task drawing its images from another split (`train`, `validation`, `test`)."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} for the images task: choose one of {', '.join(SPLITS)}")
        return self if split == self.split else ImageTask(self.cfg, split)

    def heldout(self) -> ImageTask:
        return self.for_split("validation")

    def sample(self, batch: int, generator: torch.Generator) -> ImageEpisode:
        cfg, g, k = self.cfg, generator, self.cfg.num_images
        # k distinct images per episode.
        picks = torch.stack([torch.randperm(len(self.images), generator=g)[:k] for _ in range(batch)])
        images = self.images[picks]  # [B, K, P]
        inputs = torch.zeros(batch, self.steps, self.n_io)
        rows = torch.arange(batch)
        t = 0
        for _ in range(cfg.num_cycles):
            order = torch.rand(batch, k, generator=g).argsort(-1)
            for j in range(k):
                inputs[:, t:t + cfg.present_steps, :self.size] = images[rows, order[:, j]].unsqueeze(1)
                t += cfg.present_steps + cfg.gap_steps
        target = images[rows, torch.randint(0, k, (batch,), generator=g)]
        top = torch.arange(self.size) < self.size // 2
        if cfg.erase_half == "random":
            erase_top = torch.rand(batch, generator=g) < 0.5
        else:
            erase_top = torch.full((batch,), cfg.erase_half == "top")
        erased = torch.where(erase_top.unsqueeze(1), top, ~top)
        cue = target.masked_fill(erased, 0.0)
        inputs[:, t:t + cfg.test_steps, :self.size] = cue.unsqueeze(1)
        if cfg.bias_neuron:
            inputs[:, :, self.size] = 1.0
        return ImageEpisode(inputs, images, target, cue, erased)

    def inputs(self, episode: ImageEpisode) -> Tensor:
        return episode.inputs

    def loss(self, outputs: Tensor, episode: ImageEpisode) -> Tensor:
        """Mean squared error over every pixel of the image at the last step."""
        return (outputs[:, -1, :self.size] - episode.target.to(outputs)).pow(2).mean()

    def metrics(self, outputs: Tensor, episode: ImageEpisode) -> dict[str, float]:
        """`loss`: squared error over all pixels; `erased_loss`: over the erased half only."""
        final = outputs[:, -1, :self.size].detach().cpu()
        err = (final - episode.target).pow(2)
        return {"loss": float(err.mean()), "erased_loss": float(err[episode.erased].mean())}

    def figure(self, outputs: Tensor, episode: ImageEpisode, index: int = 0):
        from plasticity.plots import reconstruction_figure

        shape = (self.side, self.side)
        return reconstruction_figure([im.reshape(shape) for im in episode.images[index]],
                                     episode.cue[index].reshape(shape),
                                     outputs[index, -1, :self.size].detach().cpu().reshape(shape),
                                     episode.target[index].reshape(shape))
