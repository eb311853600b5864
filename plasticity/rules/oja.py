"""Oja's rule: `Hebb_ij <- Hebb_ij + eta * post_j * (pre_i - post_j * Hebb_ij)` (batched).

The elementwise functions below are the rule's single definition: the batched update
and every fused kernel are derived from them (see `Elementwise`). The rule is not
modulated: its functions take the modulatory signal `mod` like every rule's and do not read it.
"""

from __future__ import annotations

from torch import Tensor

from plasticity.rules.base import Elementwise, Rule, Traces, apply_elementwise, maybe_clip, register


def update(h, pre, post, eta, mod):
    return h + eta * post * (pre - post * h)


def inverse(h_next, pre, post, eta, mod):
    return (h_next - eta * post * pre) / (1.0 - eta * post * post)


def d_h(h, pre, post, eta, mod):
    return 1.0 - eta * post * post


def d_pre(h, pre, post, eta, mod):
    return eta * post


def d_post(h, pre, post, eta, mod):
    return eta * (pre - 2.0 * post * h)


def d_eta(h, pre, post, eta, mod):
    return post * (pre - post * h)


ELEMENTWISE = Elementwise(update=update, inverse=inverse, d_h=d_h, d_pre=d_pre, d_post=d_post, d_eta=d_eta)


def oja_update(traces: Traces, pre: Tensor, post: Tensor, *, eta: Tensor,
               clip: float | None = None, mod: Tensor | None = None) -> Traces:
    """Shapes as in `hebb_update`. `mod` is ignored (the rule is not modulated)."""
    (hebb,) = traces
    return (maybe_clip(apply_elementwise(update, hebb, pre, post, eta), clip),)


OJA = register(Rule("oja", oja_update, elementwise=ELEMENTWISE))
