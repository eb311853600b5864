"""Binary pattern memorisation and completion (Miconi et al. 2018, Fig. 1).

Each episode: `num_patterns` fresh random +-1 patterns are each shown for
`present_steps` steps followed by `gap_steps` zero steps, the whole set `num_cycles`
times in a new random order; then one of them, with `erase_fraction` of its bits set
to 0, is shown for `test_steps` steps. The network must output the whole pattern at
the last step. Inputs are multiplied by `input_gain`; an optional bias channel is 1.

    task = PatternTask(cfg); ep = task.sample(8, generator)
    out, _ = model(task.inputs(ep)); task.loss(out, ep), task.metrics(out, ep)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from plasticity.tasks.base import EpisodicTask, register_task


@dataclass
class PatternEpisode:
    """A batch of pattern episodes. P = pattern_size, K = num_patterns."""

    inputs: Tensor
    """`[B, T, n_io]` network input (gain applied, bias channel last if any)."""
    patterns: Tensor
    """`[B, K, P]` the stored patterns."""
    target: Tensor
    """`[B, P]` the full test pattern."""
    cue: Tensor
    """`[B, P]` the degraded test pattern that was shown."""
    erased: Tensor
    """`[B, P]` bool, True where the cue's bit was erased."""


@register_task("patterns")
class PatternTask(EpisodicTask):
    headline = "bit_error_all"

    def __init__(self, cfg):
        self.cfg = cfg
        self.size = cfg.pattern_size
        self.n_io = cfg.pattern_size + int(cfg.bias_neuron)
        self.steps = cfg.num_patterns * cfg.num_cycles * (cfg.present_steps + cfg.gap_steps) + cfg.test_steps

    @classmethod
    def episode_layout(cls, cfg) -> dict:
        return dict(item_size=cfg.pattern_size, num_items=cfg.num_patterns, num_cycles=cfg.num_cycles,
                    present_steps=cfg.present_steps, gap_steps=cfg.gap_steps, test_steps=cfg.test_steps,
                    gain=float(cfg.input_gain), bias=bool(cfg.bias_neuron), ternary=True)

    def _random_patterns(self, batch: int, g: torch.Generator) -> Tensor:
        cfg, shape = self.cfg, (batch, self.cfg.num_patterns, self.size)
        if cfg.balanced:
            # A random permutation per pattern: exactly half the bits are +1.
            ranks = torch.rand(shape, generator=g).argsort(-1)
            return torch.where(ranks < self.size // 2, 1.0, -1.0)
        return torch.randint(0, 2, shape, generator=g).float() * 2 - 1

    def sample(self, batch: int, generator: torch.Generator) -> PatternEpisode:
        cfg, g = self.cfg, generator
        patterns = self._random_patterns(batch, g)
        inputs = torch.zeros(batch, self.steps, self.n_io)
        rows = torch.arange(batch)
        t = 0
        for _ in range(cfg.num_cycles):
            order = torch.rand(batch, cfg.num_patterns, generator=g).argsort(-1)
            for k in range(cfg.num_patterns):
                shown = patterns[rows, order[:, k]]  # [B, P]
                inputs[:, t:t + cfg.present_steps, :self.size] = shown.unsqueeze(1)
                t += cfg.present_steps + cfg.gap_steps
        which = torch.randint(0, cfg.num_patterns, (batch,), generator=g)
        target = patterns[rows, which]
        n_erased = round(cfg.erase_fraction * self.size)
        erased = torch.rand(batch, self.size, generator=g).argsort(-1) < n_erased
        cue = target.masked_fill(erased, 0.0)
        inputs[:, t:t + cfg.test_steps, :self.size] = cue.unsqueeze(1)
        if cfg.bias_neuron:
            inputs[:, :, self.size] = 1.0
        return PatternEpisode(inputs * cfg.input_gain, patterns, target, cue, erased)

    def inputs(self, episode: PatternEpisode) -> Tensor:
        return episode.inputs

    def loss(self, outputs: Tensor, episode: PatternEpisode) -> Tensor:
        """Mean squared error over the pattern's bits at the last step."""
        return (outputs[:, -1, :self.size] - episode.target.to(outputs)).pow(2).mean()

    def episode_metrics(self, outputs: Tensor, episode: PatternEpisode) -> dict[str, Tensor]:
        """Per-episode values `[B]`: `loss`; `bit_error_all`: wrong signs over all bits
        at the last step (chance 0.25, the 2018 code's and the paper's figure);
        `bit_error_erased`: over the erased bits only (chance 0.5)."""
        final = outputs[:, -1, :self.size].detach().cpu()
        target = episode.target.to(final)
        wrong = (torch.sign(final) != target).float()
        erased = episode.erased.float()
        return {
            "loss": (final - target).pow(2).mean(-1),
            "bit_error_all": wrong.mean(-1),
            "bit_error_erased": (wrong * erased).sum(-1) / erased.sum(-1).clamp_min(1),
        }

    def metrics(self, outputs: Tensor, episode: PatternEpisode) -> dict[str, float]:
        """Means over the batch of `episode_metrics`."""
        return {k: float(v.mean()) for k, v in self.episode_metrics(outputs, episode).items()}

    def figure(self, outputs: Tensor, episode: PatternEpisode, index: int = 0):
        from plasticity.plots import completion_figure

        return completion_figure(episode.patterns[index], episode.cue[index], episode.target[index],
                                 outputs[index, -1, :self.size].detach().cpu())
