"""A trained network ready to serve: rebuilt from a checkpoint without the task's data.

    served = ServedModel.from_checkpoint("runs/<run>/checkpoint.pt")
    served.run_episodes(episodes [E, K+1, P]) -> outputs [E, P]   (Hebb from zero per episode)
    served.step(inputs [B, P], state) -> (outputs [B, P], state)  (one network step)
    served.steps(inputs [B, T, P], state) -> (outputs [B, T, P], state)  (T steps, one forward)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plasticity.models import build_model
from plasticity.nn.fused import prepare
from plasticity.plugins import load_all as load_plugins
from plasticity.serving.episode import EpisodeLayout
from plasticity.train.checkpoint import load_checkpoint, stored_config
from plasticity.train.common import load_weights


@dataclass
class ServedModel:
    model: nn.Module
    """A `SequenceModel`: `forward(inputs [B, T, n_io], state) -> (outputs [B, T, n_io], state)`."""
    cfg: object
    layout: EpisodeLayout
    episode: int
    """Training episodes the weights have seen."""

    @classmethod
    def from_checkpoint(cls, path: str | Path, threads: int | None = None) -> ServedModel:
        """Load `path` (a `checkpoint.pt`); the architecture comes from its config.
        `threads` sets torch's intra-op threads (None: leave as is)."""
        load_plugins(warn=lambda line: None)  # a plugin's task: its entry point or $PLASTICITY_PLUGINS
        ckpt = load_checkpoint(path)
        cfg = stored_config(ckpt["config"], path)
        layout = EpisodeLayout.from_config(cfg)
        # build_model, not make_task(cfg).build_model: serving needs no training data on disk.
        model = load_weights(build_model(cfg, layout.n_io), ckpt, path).eval()
        if threads:
            torch.set_num_threads(threads)
        return cls(model, cfg, layout, int(ckpt["episode"]))

    @property
    def n_neurons(self) -> int:
        return self.model.n_core

    @property
    def batch_dim(self) -> int:
        """Where the state holds the batch: 0, except 1 for the LSTM's (h, c) `[layers, B, H]`."""
        return 0 if hasattr(self.model.core, "initial_state") else 1

    def state_bytes(self) -> int:
        """Memory of one session's state (activity and Hebbian traces), in bytes."""
        state = self.initial_state()
        return sum(t.numel() * t.element_size() for t in _tensors(state))

    def initial_state(self, batch: int = 1):
        """The state at the start of an episode (zero activity, zero Hebb), batch `batch`."""
        core = self.model.core
        if hasattr(core, "initial_state"):
            return core.initial_state(batch)
        zeros = torch.zeros(core.lstm.num_layers, batch, core.lstm.hidden_size)
        return (zeros, zeros.clone())

    def warm_up(self) -> None:
        """Build the fused C++ kernels the model uses (first use on a machine can take a
        minute; `plasticity.nn.fused.prepare` decides), then run one example episode, so
        that the first request pays for neither."""
        prepare(self.cfg, next(self.model.parameters()).device)
        self.run_episodes(self.layout.example())

    @torch.no_grad()
    def run_episodes(self, episodes: np.ndarray) -> np.ndarray:
        """Whole episodes `[E, K+1, P]` (checked values) -> the output at the last step
        `[E, P]`, each episode from a zero state."""
        inputs = self.layout.episode_inputs(torch.from_numpy(np.ascontiguousarray(episodes, dtype=np.float32)))
        outputs, _ = self.model(inputs)
        return outputs[:, -1, :self.layout.item_size].numpy()

    @torch.no_grad()
    def step(self, values: torch.Tensor, state):
        """One network step for B sessions: items `[B, P]`, their batched state ->
        (outputs `[B, P]`, new batched state)."""
        outputs, state = self.steps(values[:, None], state)
        return outputs[:, 0], state

    @torch.no_grad()
    def steps(self, values: torch.Tensor, state):
        """T network steps for B sessions in one forward (the fused path over the whole
        sequence): items `[B, T, P]`, their batched state -> (outputs `[B, T, P]`, new
        batched state)."""
        outputs, state = self.model(self.layout.step_inputs(values), state)
        return outputs[..., :self.layout.item_size], state


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    else:
        for s in state:
            yield from _tensors(s)


def stack_states(states: list, dim: int = 0):
    """B states of batch 1 -> one state of batch B (same nesting: tensors, tuples, NamedTuples).
    LSTM states carry the batch on dim 1."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim)
    parts = [stack_states([s[i] for s in states], dim) for i in range(len(first))]
    return type(first)(*parts) if hasattr(first, "_fields") else type(first)(parts)


def copy_state_into(dst, src, index: int, dim: int = 0) -> None:
    """Copy element `index` of the batched state `src` into the batch-1 state `dst`, in
    place (a copy, not a view: a view would keep the whole batch's tensors alive)."""
    if isinstance(dst, torch.Tensor):
        dst.copy_(src.narrow(dim, index, 1))
        return
    for d, s in zip(dst, src, strict=True):
        copy_state_into(d, s, index, dim)


def zero_state_(state) -> None:
    for t in _tensors(state):
        t.zero_()
