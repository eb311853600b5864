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
