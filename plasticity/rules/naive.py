"""Naive references for the plasticity rules: one episode, no batch dimension.

These transcribe the formulas of `README.md` literally, the way the 2018 reference
code wrote them (`torch.outer`, no broadcasting over a batch), so that the batched
rules can be checked against them on values and gradients.

Shapes: hebb `[N_in, N_out]`, pre `[N_in]`, post `[N_out]`, eta a scalar tensor or
`[N_in, N_out]`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _clip(hebb: Tensor, clip: float | None) -> Tensor:
    return hebb if clip is None else torch.clamp(hebb, -clip, clip)


def hebb_step_naive(hebb: Tensor, pre: Tensor, post: Tensor, eta: Tensor,
                    clip: float | None = None) -> Tensor:
    """Hebb_ij(t+1) = eta * pre_i * post_j + (1 - eta) * Hebb_ij(t)."""
    return _clip(eta * torch.outer(pre, post) + (1 - eta) * hebb, clip)


def oja_step_naive(hebb: Tensor, pre: Tensor, post: Tensor, eta: Tensor,
                   clip: float | None = None) -> Tensor:
    """Hebb_ij(t+1) = Hebb_ij(t) + eta * post_j * (pre_i - post_j * Hebb_ij(t))."""
    pre_col = pre.reshape(-1, 1)
    post_row = post.reshape(1, -1)
    return _clip(hebb + eta * post_row * (pre_col - post_row * hebb), clip)


NAIVE_STEPS = {"hebb": hebb_step_naive, "oja": oja_step_naive}


def _mod_naive(mod: Tensor) -> Tensor:
    """One value for the episode, or one per postsynaptic neuron (a `[1, N_out]` row)."""
    return mod.reshape(1, -1) if mod.dim() == 1 else mod


def neuromod_step_naive(traces: tuple[Tensor, ...], pre: Tensor, post: Tensor, eta: Tensor, mod: Tensor,
                        clip: float | None = 1.0) -> tuple[Tensor, ...]:
    """Hebb_ij(t+1) = clip(Hebb_ij(t) + M_j(t) * pre_i * post_j); eta is not used."""
    (hebb,) = traces
    return (_clip(hebb + _mod_naive(mod) * torch.outer(pre, post), clip),)


def retroactive_step_naive(traces: tuple[Tensor, ...], pre: Tensor, post: Tensor, eta: Tensor, mod: Tensor,
                           clip: float | None = 1.0) -> tuple[Tensor, ...]:
    """Hebb_ij(t+1) = clip(Hebb_ij(t) + M_j(t) * E_ij(t));
    E_ij(t+1) = (1 - eta) * E_ij(t) + eta * pre_i * post_j."""
    hebb, elig = traces
    new_hebb = _clip(hebb + _mod_naive(mod) * elig, clip)
    return new_hebb, (1 - eta) * elig + eta * torch.outer(pre, post)


NAIVE_MODULATED_STEPS = {"neuromod": neuromod_step_naive, "retroactive": retroactive_step_naive}
"""Steps of the neuromodulated rules: `(traces, pre, post, eta, mod [] or [N_out], clip) -> traces`."""
