"""Oja's rule: `Hebb_ij <- Hebb_ij + eta * post_j * (pre_i - post_j * Hebb_ij)` (batched)."""

from __future__ import annotations

from torch import Tensor

from plasticity.rules.base import Rule, Traces, maybe_clip, register


def oja_update(traces: Traces, pre: Tensor, post: Tensor, *, eta: Tensor,
               clip: float | None = None, mod: Tensor | None = None) -> Traces:
    """Shapes as in `hebb_update`. `mod` is ignored (the rule is not modulated)."""
    (hebb,) = traces
    post_ = post.unsqueeze(-2)  # [B, 1, N_out]
    new = hebb + eta * post_ * (pre.unsqueeze(-1) - post_ * hebb)
    return (maybe_clip(new, clip),)


OJA = register(Rule("oja", oja_update))
