"""Retroactive neuromodulation (Backpropamine, Miconi et al. 2019), batched.

    Hebb <- clip(Hebb + M(t) * E);   E <- E + eta * (pre post^T - E)

The rule carries two traces: Hebb and the eligibility trace E of recent coincidences
(eta is E's rate). The network's modulatory signal M(t) (`mod`) decides, later, how much
of E is written into Hebb; Hebb takes E(t) before E is updated. Hebb is clipped
(default 1.0, as in Backpropamine), E is not.

The elementwise functions below (`Elementwise2`: each takes h, e, pre, post, eta, mod)
are the rule's single definition: the batched update and every fused kernel are derived
from them.
"""

from __future__ import annotations

from torch import Tensor

from plasticity.rules.base import Elementwise2, Rule, Traces, maybe_clip, register
from plasticity.rules.neuromod import DEFAULT_CLIP, modulation


def update(h, e, pre, post, eta, mod):
    return h + mod * e


def update_e(h, e, pre, post, eta, mod):
    # Written as a lerp, like the decaying Hebb rule.
    return e + eta * (pre * post - e)


def d_h(h, e, pre, post, eta, mod):
    return 1.0


def d_e(h, e, pre, post, eta, mod):
    return mod


def d_pre(h, e, pre, post, eta, mod):
    return 0.0


def d_post(h, e, pre, post, eta, mod):
    return 0.0


def d_eta(h, e, pre, post, eta, mod):
    return 0.0


def d_mod(h, e, pre, post, eta, mod):
    return e


def e_d_h(h, e, pre, post, eta, mod):
    return 0.0


def e_d_e(h, e, pre, post, eta, mod):
    return 1.0 - eta


def e_d_pre(h, e, pre, post, eta, mod):
    return eta * post


def e_d_post(h, e, pre, post, eta, mod):
    return eta * pre


def e_d_eta(h, e, pre, post, eta, mod):
    return pre * post - e


def e_d_mod(h, e, pre, post, eta, mod):
    return 0.0


ELEMENTWISE = Elementwise2(update=update, update_e=update_e, d_h=d_h, d_e=d_e, d_pre=d_pre, d_post=d_post,
                           d_eta=d_eta, e_d_h=e_d_h, e_d_e=e_d_e, e_d_pre=e_d_pre, e_d_post=e_d_post,
                           e_d_eta=e_d_eta, d_mod=d_mod, e_d_mod=e_d_mod)


def retroactive_update(traces: Traces, pre: Tensor, post: Tensor, *, eta: Tensor,
                       clip: float | None = DEFAULT_CLIP, mod: Tensor | None = None) -> Traces:
    """Traces (Hebb, E), each `[B, N_in, N_out]`; pre `[B, N_in]`, post `[B, N_out]`, eta `[]`
    or `[N_in, N_out]` (E's rate), mod `[B]`, `[B, 1]` or `[B, N_out]`."""
    hebb, elig = traces
    args = (hebb, elig, pre.unsqueeze(-1), post.unsqueeze(-2), eta, modulation(mod, post, "retroactive"))
    return maybe_clip(update(*args), clip), update_e(*args)


RETROACTIVE = register(Rule("retroactive", retroactive_update, traces=("hebb", "eligibility"), modulated=True,
                            elementwise=ELEMENTWISE))
