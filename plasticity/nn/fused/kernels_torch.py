"""The two per-step kernels written with torch ops: any device, any float dtype.

    kernels = TorchKernels(get_rule("oja").elementwise)
    clipped, z = kernels.forward_step(h, h_next, pre, post, alpha, eta, clip, True)

The readable reference of the kernel contract (`contract.Kernels`): the C++ and Triton
kernels are tested against it, and it is the path for the devices and dtypes they do
not take. It calls the rule's elementwise functions on broadcast tensors; more passes
over memory than the others.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plasticity.nn.fused.contract import CKPT, INVERT, NONE, plus_w
from plasticity.rules import Elementwise, Elementwise2
from plasticity.rules.base import apply_elementwise


class TorchKernels:
    """The kernel contract for the rule whose elementwise form is `form`, in torch ops."""

    name = "torch"

    def __init__(self, form: Elementwise | Elementwise2):
        self.form = form

    def forward_step(self, h, h_next, pre, post, alpha, eta, clip, want_z, w=None, mod=None, e=None, e_next=None):
        if h is None:
            h = torch.zeros_like(h_next)
        if e_next is not None:
            # A two-trace rule: E_{t+1} from (H_t, E_t) too, computed before either is overwritten.
            args = (h, torch.zeros_like(e_next) if e is None else e, pre.unsqueeze(2), post.unsqueeze(1), eta,
                    _column(mod))
            raw, new_e = self.form.update(*args), self.form.update_e(*args)
            e_next.copy_(new_e)
        else:
            raw = apply_elementwise(self.form.update, h, pre, post, eta, _column(mod))
        clipped = False
        if clip:
            clipped = bool((raw.abs() > clip).any())
            raw = raw.clamp(-clip, clip)
        h_next.copy_(raw)
        if not want_z:
            return clipped, None
        if alpha.dim() == 0:
            z = alpha * torch.bmm(post.unsqueeze(1), h_next).squeeze(1)
        else:
            z = torch.bmm(post.unsqueeze(1), alpha * h_next).squeeze(1)
        return clipped, plus_w(z, post, w)

    def backward_stage(self, h, grad_h, ckpt, prev, stage, pre, post, grad_a, same_episode, pre_p, post_p, alpha, eta,
                       clip, dpre, dalpha, deta, w=None, mod=None, mod_p=None, dmod=None, e=None, grad_e=None,
                       ckpt_e=None):
        # A two-trace rule (`Elementwise2`) also has its second trace E in `e`, E's gradient in
        # `grad_e` and its stored state in `ckpt_e` (None: zeros); it is never inverted.
        form, two, grad_h_buffer = self.form, grad_e is not None, grad_h
        if two and prev == INVERT:
            raise ValueError("a two-trace rule's states are recomputed, not inverted: pass prev=CKPT")
        grad_e_t = grad_e

        def args_of(h_t, e_t, pre_t, post_t, mod_t):
            """The form's arguments: (h[, e], pre_i, post_j, eta, M_j)."""
            return (h_t, *((e_t,) if two else ()), pre_t.unsqueeze(2), post_t.unsqueeze(1), eta, _column(mod_t))

        def through(field, args):
            """grad_h * d h'/d arg (+ grad_e * d e'/d arg for a two-trace rule), `field` = d_<arg>."""
            term = grad_h * getattr(form, field)(*args)
            return term + grad_e_t * getattr(form, "e_" + field)(*args) if two else term

        if stage:
            # Step t: H_{t+1} = update(H_t, pre, post, mod); grad_h holds dL/dH_{t+1}, h holds H_t.
            args = args_of(h, e, pre, post, mod)
            pre_i, grad_a_j = pre.unsqueeze(2), grad_a.unsqueeze(1)
            dpre.copy_(through("d_pre", args).sum(-1) + (alpha * h * grad_a_j).sum(-1))
            if w is not None:
                dpre.addmm_(grad_a, w.t())
            dalpha += (pre_i * h * grad_a_j).sum(0)
            keep = same_episode.view(-1, 1, 1)
            new_grad_h = (through("d_h", args) + alpha * pre_i * grad_a_j) * keep
            if two:  # dL/dE_t: E_t is read by the Hebb update (d_e) and by its own (e_d_e)
                grad_e_t = through("d_e", args) * keep
            grad_h = new_grad_h
        col_sums = torch.zeros_like(pre_p)
        if dmod is not None:
            dmod.zero_()
        if prev != NONE:
            # Step t-1: H_t = update(H_{t-1}, pre_p, post_p, mod_p); grad_h holds dL/dH_t.
            if prev == INVERT:
                h_prev = form.inverse(h, *args_of(h, e, pre_p, post_p, mod_p)[1:])
            else:
                h_prev = torch.zeros_like(h) if ckpt is None else ckpt
            e_prev = (torch.zeros_like(e) if ckpt_e is None else ckpt_e) if two else None
            args = args_of(h_prev, e_prev, pre_p, post_p, mod_p)
            if clip and prev == CKPT:
                grad_h = grad_h * (form.update(*args).abs() <= clip)
            col_sums = through("d_post", args).sum(1)
            deta += through("d_eta", args).sum(0)
            if dmod is not None:
                dmod.copy_(through("d_mod", args).sum(1))
            h.copy_(h_prev)
            if two:
                e.copy_(e_prev)
        grad_h_buffer.copy_(grad_h)
        if two:
            grad_e.copy_(grad_e_t)
        return col_sums


def _column(mod: Tensor | None) -> Tensor | float:
    """M(t) `[B, N]` as the `[B, 1, N]` columns of the torch-op kernels (0: no modulation)."""
    return 0.0 if mod is None else mod.unsqueeze(1)
