"""Decaying Hebbian rule: `Hebb <- eta * pre post^T + (1 - eta) * Hebb` (batched)."""

from __future__ import annotations

from torch import Tensor

from plasticity.rules.base import Rule, Traces, maybe_clip, outer, register


def hebb_update(traces: Traces, pre: Tensor, post: Tensor, *, eta: Tensor,
                clip: float | None = None, mod: Tensor | None = None) -> Traces:
    """Shapes: Hebb `[B, N_in, N_out]`, pre `[B, N_in]`, post `[B, N_out]`,
    eta `[]` or `[N_in, N_out]`. `mod` is ignored (the rule is not modulated)."""
    (hebb,) = traces
    # Written as a lerp so that autograd keeps one N^2 tensor (outer - hebb) per step.
    new = hebb + eta * (outer(pre, post) - hebb)
    return (maybe_clip(new, clip),)


HEBB = register(Rule("hebb", hebb_update, invertible=True))
