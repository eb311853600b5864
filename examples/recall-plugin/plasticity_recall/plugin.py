"""Associative recall, the instar rule and a search space, registered with plasticity.

Each episode shows `num_pairs` fresh (key, value) pairs of random +-1 vectors, each pair
for `present_steps` steps followed by `gap_steps` zero steps; then one of the keys alone
(its value part zero) for `query_steps` steps. At the last step the network must output
that key's value. A plastic network stores the pairs in its Hebbian trace.

    pip install -e examples/recall-plugin          # the entry point makes it a plugin
    plasticity train recall --preset small         # or, not installed: --plugin plasticity_recall.plugin
    plasticity sweep --task recall --smoke-test
    plasticity serve runs/<run>/checkpoint.pt      # live sessions: pairs, then a key
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from plasticity.config import TaskConfig, register_config, register_space
from plasticity.config.limits import NonNegative, Positive
from plasticity.rules import Elementwise, Rule, register
from plasticity.rules.base import apply_elementwise, maybe_clip
from plasticity.tasks import EpisodicTask, register_task


# ----------------------------------------------------------------------------- the config
@dataclass
class RecallConfig(TaskConfig):
    """Associative recall: (key, value) pairs shown once, then a key; answer its value."""

    task: Literal["recall"] = "recall"
    """The task (fixed for this config)."""
    preset: str = "small"
    """Named settings this config started from: `small` (trains in about a minute) or `large`."""
    key_size: Positive[int] = 8
    """Bits per key (each +1 or -1)."""
    value_size: Positive[int] = 8
    """Bits per value."""
    num_pairs: Positive[int] = 3
    """Pairs to store per episode."""
    present_steps: Positive[int] = 2
    """Steps each pair is shown for."""
    gap_steps: NonNegative[int] = 1
    """Zero-input steps after each pair."""
    query_steps: Positive[int] = 2
    """Steps the query key is shown for; the answer is read at the last one."""
    input_gain: Positive[float] = 10.0
    """The input is multiplied by this."""

    def neurons(self) -> int:
        return super().neurons() + self.key_size + self.value_size + 1

    def steps(self) -> int:
        return self.num_pairs * (self.present_steps + self.gap_steps) + self.query_steps


register_config(RecallConfig, {
    "small": dict(lr=3e-3, eta=0.1, batch_size=32, episodes=4000, eval_every=500, eval_episodes=256, save_every=2000),
    "large": dict(key_size=32, value_size=32, num_pairs=6, lr=1e-3, eta=0.05, batch_size=32, episodes=20000,
                  eval_every=1000, eval_episodes=512, save_every=5000),
})


# ------------------------------------------------------------------------------- the task
@dataclass
class RecallEpisode:
    inputs: Tensor
    """`[B, T, n_io]`: key, value, bias."""
    keys: Tensor
    """`[B, K, key_size]`."""
    values: Tensor
    """`[B, K, value_size]`."""
    which: Tensor
    """`[B]` the queried pair."""


@register_task("recall")
class RecallTask(EpisodicTask):
    headline = "bit_error"

    def __init__(self, cfg: RecallConfig):
        self.cfg = cfg
        self.n_io = cfg.key_size + cfg.value_size + 1

    @classmethod
    def episode_layout(cls, cfg: RecallConfig) -> dict:
        """For serving: the items are the (key, value) pairs, shown once each; the query is
        a key with its value part zero. The answer is the output's value part."""
        return dict(item_size=cfg.key_size + cfg.value_size, num_items=cfg.num_pairs, num_cycles=1,
                    present_steps=cfg.present_steps, gap_steps=cfg.gap_steps, test_steps=cfg.query_steps,
                    gain=float(cfg.input_gain), bias=True, ternary=True)

    def sample(self, batch: int, generator: torch.Generator) -> RecallEpisode:
        cfg, g = self.cfg, generator
        keys = torch.randint(0, 2, (batch, cfg.num_pairs, cfg.key_size), generator=g).float() * 2 - 1
        values = torch.randint(0, 2, (batch, cfg.num_pairs, cfg.value_size), generator=g).float() * 2 - 1
        inputs = torch.zeros(batch, cfg.steps(), self.n_io)
        t = 0
        for k in range(cfg.num_pairs):
            inputs[:, t:t + cfg.present_steps, :cfg.key_size] = keys[:, k].unsqueeze(1)
            inputs[:, t:t + cfg.present_steps, cfg.key_size:-1] = values[:, k].unsqueeze(1)
            t += cfg.present_steps + cfg.gap_steps
        which = torch.randint(0, cfg.num_pairs, (batch,), generator=g)
        inputs[:, t:, :cfg.key_size] = keys[torch.arange(batch), which].unsqueeze(1)
        inputs[:, :, -1] = 1.0
        return RecallEpisode(inputs * cfg.input_gain, keys, values, which)

    def inputs(self, episode: RecallEpisode) -> Tensor:
        return episode.inputs

    def _answer(self, outputs: Tensor) -> Tensor:
        return outputs[:, -1, self.cfg.key_size:self.cfg.key_size + self.cfg.value_size]

    def _target(self, episode: RecallEpisode) -> Tensor:
        return episode.values[torch.arange(len(episode.which)), episode.which]

    def loss(self, outputs: Tensor, episode: RecallEpisode) -> Tensor:
        return (self._answer(outputs) - self._target(episode).to(outputs)).pow(2).mean()

    def episode_metrics(self, outputs: Tensor, episode: RecallEpisode) -> dict[str, Tensor]:
        answer, target = self._answer(outputs).detach().cpu(), self._target(episode)
        return {"loss": (answer - target).pow(2).mean(-1),
                "bit_error": (torch.sign(answer) != target).float().mean(-1)}

    def metrics(self, outputs: Tensor, episode: RecallEpisode) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.episode_metrics(outputs, episode).items()}

    def figure(self, outputs: Tensor, episode: RecallEpisode, index: int = 0):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [episode.keys[index], episode.values[index],
                self._target(episode)[index:index + 1], self._answer(outputs)[index:index + 1].detach().cpu()]
        fig, axes = plt.subplots(1, 4, figsize=(8, 2.5))
        for ax, title, data in zip(axes, ("keys", "values", "target", "answer"), rows, strict=True):
            ax.imshow(data.numpy(), cmap="coolwarm", vmin=-1, vmax=1)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        return fig


# ------------------------------------------------------------------------------- the rule
# Grossberg's instar: Hebb_ij <- Hebb_ij + eta * post_j * (pre_i - Hebb_ij). Written once,
# as functions of one connection; plasticity derives the batched update and its fused
# kernels from them and checks the derivatives when the plugin loads.
def update(h, pre, post, eta, mod):
    return h + eta * post * (pre - h)


def inverse(h_next, pre, post, eta, mod):
    return (h_next - eta * post * pre) / (1.0 - eta * post)


def d_h(h, pre, post, eta, mod):
    return 1.0 - eta * post


def d_pre(h, pre, post, eta, mod):
    return eta * post


def d_post(h, pre, post, eta, mod):
    return eta * (pre - h)


def d_eta(h, pre, post, eta, mod):
    return post * (pre - h)


INSTAR = Elementwise(update=update, inverse=inverse, d_h=d_h, d_pre=d_pre, d_post=d_post, d_eta=d_eta)


def instar_update(traces, pre, post, *, eta, clip=None, mod=None):
    (hebb,) = traces
    return (maybe_clip(apply_elementwise(update, hebb, pre, post, eta), clip),)


register(Rule("instar", instar_update, elementwise=INSTAR))


# ------------------------------------------------------------------------ the search space
register_space("recall", {
    "rule": {"type": "categorical", "choices": ["hebb", "oja", "instar"]},
    "eta": {"type": "float", "low": 1e-2, "high": 0.5, "log": True},
    "lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
})
