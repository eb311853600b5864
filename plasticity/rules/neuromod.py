"""Neuromodulated plasticity (Backpropamine, Miconi et al. 2019), batched, and what the
neuromodulated rules share (`retroactive.py` is the other one).

    neuromod     Hebb <- clip(Hebb + M(t) * pre post^T)
    retroactive  Hebb <- clip(Hebb + M(t) * E);  E <- (1 - eta) E + eta * pre post^T

`M(t)` is the network's own modulatory signal (`mod`, `[B]`, `[B, 1]` or `[B, N_out]`:
one value per episode or one per postsynaptic neuron). It replaces the fixed rate of the
other rules: in `neuromod` eta is not used; in `retroactive` eta is the decay of the
eligibility trace E, and M(t) decides how much of E is written into Hebb. Both clip Hebb
(default 1.0, as in Backpropamine) because nothing else bounds it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plasticity.errors import ShapeError
from plasticity.rules.base import Elementwise, Rule, Traces, apply_elementwise, maybe_clip, register

DEFAULT_CLIP = 1.0
"""Backpropamine's Hebb clipping for the neuromodulated rules."""


def modulation_signal(y: Tensor, w_mod: Tensor, b_mod: Tensor) -> Tensor:
    """The network's modulatory signal `M(t) = tanh(y(t) @ w_mod + b_mod)`: y `[B, N]`,
    w_mod `[N, k]`, b_mod `[k]` -> `[B, k]` (k = 1: one M per episode; k = N: one per
    postsynaptic neuron). The layers' autograd loop and the fused path both call this."""
    return torch.tanh(torch.addmm(b_mod, y, w_mod))


def modulation(mod: Tensor | None, post: Tensor, rule: str) -> Tensor:
    """`mod` `[B]`, `[B, 1]` or `[B, N_out]` as `[B, 1, 1 or N_out]`, to scale `[B, N_in, N_out]`."""
    if mod is None:
        raise ShapeError(f"rule {rule!r} needs a modulatory signal mod [B] or [B, N_out]: build the layer "
                         "with modulation='network' or 'neuron'")
    batch, n_out = post.shape
    m = mod.reshape(batch, 1) if mod.dim() == 1 else mod
    if m.dim() != 2 or m.shape[0] != batch or m.shape[1] not in (1, n_out):
        raise ShapeError(f"mod must be [B], [B, 1] or [B, N_out] = [{batch}, {n_out}], got {tuple(mod.shape)}")
    return m.unsqueeze(-2)


# The elementwise form of `neuromod` (see `Elementwise`): its single definition, from
# which the batched update below and every fused kernel are derived. eta is not read.
def update(h, pre, post, eta, mod):
    return h + mod * pre * post


def inverse(h_next, pre, post, eta, mod):
    return h_next - mod * pre * post


def d_h(h, pre, post, eta, mod):
    return 1.0


def d_pre(h, pre, post, eta, mod):
    return mod * post


def d_post(h, pre, post, eta, mod):
    return mod * pre


def d_eta(h, pre, post, eta, mod):
    return 0.0


def d_mod(h, pre, post, eta, mod):
    return pre * post


ELEMENTWISE = Elementwise(update=update, inverse=inverse, d_h=d_h, d_pre=d_pre, d_post=d_post, d_eta=d_eta,
                          d_mod=d_mod)


def neuromod_update(traces: Traces, pre: Tensor, post: Tensor, *, eta: Tensor | None = None,
                    clip: float | None = DEFAULT_CLIP, mod: Tensor | None = None) -> Traces:
    """Simple neuromodulation. Shapes: Hebb `[B, N_in, N_out]`, pre `[B, N_in]`, post `[B, N_out]`,
    mod `[B]` or `[B, N_out]`. `eta` is ignored: M(t) is the rate."""
    (hebb,) = traces
    return (maybe_clip(apply_elementwise(update, hebb, pre, post, eta, modulation(mod, post, "neuromod")), clip),)


NEUROMOD = register(Rule("neuromod", neuromod_update, modulated=True, elementwise=ELEMENTWISE))
