"""Decaying Hebbian rule: `Hebb <- eta * pre post^T + (1 - eta) * Hebb` (batched).

The elementwise functions below are the rule's single definition: the batched update
and every fused kernel are derived from them (see `Elementwise`). The rule is not
modulated: its functions take the modulatory signal `mod` like every rule's and do not read it.
"""

from __future__ import annotations

from torch import Tensor

from plasticity.rules.base import Elementwise, Rule, Traces, apply_elementwise, maybe_clip, register


def update(h, pre, post, eta, mod):
    # Written as a lerp so that autograd keeps one N^2 tensor (outer - hebb) per step.
    return h + eta * (pre * post - h)


def inverse(h_next, pre, post, eta, mod):
    return (h_next - eta * pre * post) / (1.0 - eta)


def d_h(h, pre, post, eta, mod):
    return 1.0 - eta


def d_pre(h, pre, post, eta, mod):
    return eta * post


def d_post(h, pre, post, eta, mod):
    return eta * pre


def d_eta(h, pre, post, eta, mod):
    return pre * post - h


ELEMENTWISE = Elementwise(update=update, inverse=inverse, d_h=d_h, d_pre=d_pre, d_post=d_post, d_eta=d_eta)


def hebb_update(traces: Traces, pre: Tensor, post: Tensor, *, eta: Tensor,
                clip: float | None = None, mod: Tensor | None = None) -> Traces:
    """Shapes: Hebb `[B, N_in, N_out]`, pre `[B, N_in]`, post `[B, N_out]`,
    eta `[]` or `[N_in, N_out]`. `mod` is ignored (the rule is not modulated)."""
    (hebb,) = traces
    return (maybe_clip(apply_elementwise(update, hebb, pre, post, eta), clip),)


HEBB = register(Rule("hebb", hebb_update, elementwise=ELEMENTWISE))
