"""The whole episode as one autograd node: the forward pass over every step, and a
backward pass that rebuilds Hebb backward in time (by inverting the rule, or from kept
states), so that training memory does not grow with steps x N^2.

    out, *final_traces = Episode.apply(inputs, same_episode, y0, h0, e0, w, alpha, eta, w_mod, b_mod, spec, save)

`api.plastic_rnn_fused` checks the inputs and makes the `EpisodeSpec`; this file runs
the episode, chunk by chunk of episodes, with the kernel set the spec names
(`contract.Kernels`) and the schedule of `schedule.py` (which states to keep). The
algorithm is in `plasticity/rules/README.md`, "Running the rules backwards".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from plasticity.nn.fused.contract import CKPT, INVERT, NONE, Kernels
from plasticity.nn.fused.schedule import Amplification, recompute_segment
from plasticity.nn.inputs import drive_derivative, drive_neurons
from plasticity.rules import Elementwise, Elementwise2
from plasticity.rules.neuromod import modulation_signal


@dataclass(frozen=True)
class EpisodeSpec:
    """How `Episode` runs: everything but the tensors (made by `api.plastic_rnn_fused`)."""

    form: Elementwise | Elementwise2
    """The rule's elementwise form."""
    d_h_reads: frozenset
    """Which of (h, pre, post, eta, mod) the rule's d_h reads (what the error bound needs)."""
    clamp_input: bool
    """The input clamps its neurons (`clamp`) rather than adding to them (`add`)."""
    clip: float | None
    """Hebb clamped to [-clip, clip] after each update; None: no clipping."""
    every: int
    """Keep an exact state every this many steps (0: only where the schedule needs one)."""
    max_amp: float
    """Largest growth of the rounding error allowed between kept states (`schedule.Amplification`)."""
    kernels: Kernels
    """The kernel set that runs the steps."""
    chunk: int
    """Episodes per chunk (see `Episode`)."""
    reads_eta: bool = True
    """Whether the rule's update reads eta (`neuromod` does not: eta then gets no gradient)."""
    traces: int = 1
    """The traces the rule carries: 1 (Hebb), 2 (Hebb and a second trace: never inverted,
    its states are recomputed in segments as those of clipped steps are)."""

    @property
    def input_mode(self) -> str:
        return "clamp" if self.clamp_input else "add"


State = tuple[Tensor, ...]
"""The traces of a chunk of episodes: (Hebb,) or (Hebb, E), each `[c, N, N]`."""


def _forward_step(k, s: State | None, s_next: State, pre, post, alpha, eta, clip, want_z, w, mod):
    """`k.forward_step` on states: from `s` (None: zeros) into `s_next` (may be `s`)."""
    second = {} if len(s_next) == 1 else {"e": None if s is None else s[1], "e_next": s_next[1]}
    return k.forward_step(None if s is None else s[0], s_next[0], pre, post, alpha, eta, clip, want_z, w, mod,
                          **second)


def _empty_state(like: State) -> State:
    return tuple(torch.empty_like(t) for t in like)


class _Modulator:
    """M(t) = tanh(y(t) @ w_mod + b_mod) of a neuromodulated network, computed inside the
    episode from each step's activity (w_mod `[N, k]`, b_mod `[k]`; k = 1: one M per
    episode, k = N: one per postsynaptic neuron), and its backward: d loss / d M(t) from
    the kernels' column sums, back through tanh into the activity and the read-out."""

    def __init__(self, w_mod: Tensor, b_mod: Tensor):
        self.w, self.b = w_mod, b_mod

    def signal(self, post: Tensor) -> Tensor:
        """M(t) `[c, k]` from the activity `[c, N]`."""
        return modulation_signal(post, self.w, self.b)

    @staticmethod
    def columns(m: Tensor, n: int) -> Tensor:
        """M(t) `[c, k]` as the kernels' `[c, N]` (one value per postsynaptic neuron)."""
        return m.expand(-1, n).contiguous() if m.shape[1] != n else m

    def backward(self, dmod: Tensor, m: Tensor, dact: Tensor) -> Tensor:
        """dmod `[c, N]` = d loss / d M(t) per neuron; writes d loss / d(y @ w_mod + b_mod)
        into dact `[c, k]` and returns its part of d loss / d y(t) `[c, N]`."""
        dm = dmod.sum(1, keepdim=True) if m.shape[1] != dmod.shape[1] else dmod
        torch.mul(dm, 1 - m * m, out=dact)
        return dact @ self.w.t()


def _forward_chunk(inputs: Tensor, same_episode: Tensor | None, y0: Tensor, h0: State | None, w: Tensor, alpha: Tensor,
                   eta: Tensor, modulator: _Modulator | None, spec: EpisodeSpec, save: bool, out: Tensor,
                   mods: Tensor | None, resets: list | None) -> tuple[State, dict, set]:
    """All steps of one chunk of episodes: inputs `[c, T, N]`, same_episode `[c, T]` or None, y0
    `[c, N]`, h0 the initial traces (each `[c, N, N]`) or None; writes the activities into out `[T, c, N]` and, for a
    neuromodulated rule, M(t) into mods `[T, c, k]`. `resets`: per step, whether any episode
    of the *batch* resets there (every chunk then stores the state before it, so that all
    schedules store the same states).
    Returns (final traces, the exact states kept for the backward pass by step, the steps
    whose state the backward pass recomputes from the last kept state, at most `segment`
    steps before: those whose update clipped (a clamp cannot be inverted), and every step
    of a two-trace rule (never inverted))."""
    k, (b, steps, n) = spec.kernels, inputs.shape
    y = y0 if same_episode is None else y0 * same_episode[:, :1]
    hcur = None if h0 is None else (h0 if same_episode is None else
                                    tuple(t * same_episode[:, 0].view(-1, 1, 1) for t in h0))
    if hcur is None:
        z = torch.zeros_like(y)
    elif alpha.dim() == 0:
        z = alpha * torch.bmm(y.unsqueeze(1), hcur[0]).squeeze(1)
    else:
        z = torch.bmm(y.unsqueeze(1), alpha * hcur[0]).squeeze(1)
    # z: the recurrent pre-activation y @ (w + alpha * H) of the next step; after the first
    # step the kernel computes it in its pass over Hebb.
    z = torch.addmm(z, y, w)
    never_inverted = spec.traces > 1  # a two-trace rule: every state is kept or recomputed
    amplification = Amplification(spec.form, eta, spec.d_h_reads) if save and not never_inverted else None
    ckpts, clipped_steps, spare, growth = {0: hcur}, set(), None, 1.0
    every = spec.every or (recompute_segment(steps) if spec.clip or never_inverted else 0)
    for t in range(steps):
        post = drive_neurons(z, inputs[:, t], spec.input_mode)
        out[t] = post
        mod = None
        if modulator is not None:
            mods[t] = modulator.signal(post)
            mod = modulator.columns(mods[t], n)
        last = t == steps - 1
        reset_next = resets is not None and not last and resets[t + 1]
        # Whether H_t must outlive this step: H_0 is the caller's (or None); a stored
        # state is decided before the update, except for clipping (known only after).
        amp = amplification(y, post, mod) if amplification is not None and t > 0 else 1.0
        store_h = t == 0 or (save and (reset_next or (every and t % every == 0)
                                      or growth * amp > spec.max_amp))
        # In place unless H_t is kept (a clipped step's H_t is recomputed, not kept).
        in_place = not store_h
        if in_place:
            h_next = hcur
        else:
            h_next = spare if spare is not None else tuple(
                torch.empty(b, n, n, dtype=inputs.dtype, device=inputs.device) for _ in range(spec.traces))
            spare = None
        clipped, z = _forward_step(k, hcur, h_next, y, post, alpha, eta, spec.clip, not last, w, mod)
        if t > 0 and save and store_h:
            ckpts[t], growth = hcur, 1.0
        elif t > 0:
            if save and (clipped or never_inverted):
                clipped_steps.add(t)  # H_t is recomputed, exactly, by the backward pass
            growth = 1.0 if save and clipped else growth * amp
            if not in_place:
                spare = hcur
        hcur, y = h_next, post
        if reset_next:
            same_next = same_episode[:, t + 1]
            y, z = y * same_next[:, None], z * same_next[:, None]
            for trace in hcur:
                trace.mul_(same_next.view(-1, 1, 1))
    return hcur, ckpts, clipped_steps


def _backward_chunk(spec: EpisodeSpec, ckpts: dict, clipped: set, inputs: Tensor, same_episode: Tensor | None,
                    y0: Tensor, out: Tensor, w: Tensor, alpha: Tensor, eta: Tensor, modulator: _Modulator | None,
                    mods: Tensor | None, h_final: State, g_out: Tensor | None, g_h: State | None, grad_a: Tensor,
                    dx: Tensor | None, dact: Tensor | None, dalpha: Tensor, deta: Tensor) -> tuple[Tensor, State]:
    """All steps of one chunk of episodes, walking time backwards (shapes as in
    `_forward_chunk`, out `[T, c, N]`; g_out `[c, T, N]` or None, g_h the gradients of the
    final traces (None where not given)).
    Writes dL/d(pre-activation) into grad_a `[T, c, N]`, dL/dinputs into dx `[T, c, N]` and,
    for a neuromodulated rule, dL/d(the modulator's pre-activation) into dact `[T, c, k]`;
    adds into dalpha and deta `[N, N]`. Returns (dL/dy0 `[c, N]`, dL/d(initial traces))."""
    k = spec.kernels
    steps, b, n = out.shape
    ones = torch.ones(b, dtype=out.dtype, device=out.device)
    same_at = (lambda t: ones) if same_episode is None else (lambda t: same_episode[:, t].contiguous())

    def pre(t: int) -> Tensor:
        y = y0 if t == 0 else out[t - 1]
        return y if same_episode is None else y * same_episode[:, t, None]

    # States recomputed for a clipped segment, by step; the buffers of those already read.
    recomputed: dict[int, State] = {}
    free: list[State] = []

    def state(t: int) -> tuple[int, State | None]:
        """How the backward pass gets H_t: (CKPT, a kept or recomputed state) or (INVERT, None).
        Called once per step, walking down: a recomputed state handed out is read before the
        next call, so its buffer goes back to `free` as it is handed out."""
        if t in ckpts:
            return CKPT, ckpts[t]
        if t not in recomputed and t in clipped:
            # Step t clipped: recompute H_{s+1} .. H_t from the last kept state H_s, step by
            # step as the forward pass did (the update is elementwise: bit for bit the same);
            # the walk down then reads each of them once.
            s = max(u for u in ckpts if u <= t)
            h_u = ckpts[s]
            for u in range(s, t):
                h_next = free.pop() if free else _empty_state(h)
                _forward_step(k, h_u, h_next, pre(u), out[u], alpha, eta, spec.clip, False, None, mod(u))
                if same_episode is not None:
                    for trace in h_next:
                        trace.mul_(same_episode[:, u + 1].view(-1, 1, 1))
                recomputed[u + 1] = h_u = h_next
        if t in recomputed:
            free.append(recomputed.pop(t))
            return CKPT, free[-1]
        return INVERT, None

    def mod(t: int) -> Tensor | None:
        return None if modulator is None else modulator.columns(mods[t], n)

    def through_mod(t: int) -> Tensor | float:
        """dL/dy_t through M(t), from the dmod the last kernel call wrote (0: no modulation)."""
        return 0.0 if modulator is None else modulator.backward(dmod, mods[t], dact[t])

    def stage(how, ckpt, *args, **kwargs) -> Tensor:
        """`k.backward_stage` on the states `h`, `grad_h` and a kept one, `ckpt` (None: zeros)."""
        second = {} if spec.traces == 1 else {"e": h[1], "grad_e": grad_h[1],
                                              "ckpt_e": None if ckpt is None else ckpt[1]}
        return k.backward_stage(h[0], grad_h[0], None if ckpt is None else ckpt[0], how, *args, **kwargs, **second)

    h = tuple(t.clone() for t in h_final)
    grad_h = tuple(torch.zeros_like(t) if g is None else g.contiguous().clone()
                   for t, g in zip(h, g_h or (None,) * len(h), strict=True))
    dpre = torch.empty(b, n, dtype=out.dtype, device=out.device)
    dmod = None if modulator is None else torch.empty(b, n, dtype=out.dtype, device=out.device)
    # The first pass only rebuilds H_{T-1} and takes the last update's rule gradients.
    # grad_y: dL/dy_t from the steps after t (the rule's update read y_t as post, and M(t) read y_t).
    last = steps - 1
    how, ckpt = state(last)
    grad_y = stage(how, ckpt, False, dpre, dpre, dpre, ones, pre(last), out[last], alpha, eta, spec.clip, dpre, dalpha,
                   deta, None, mod(last), mod(last), dmod)
    grad_y = grad_y + through_mod(last)
    for t in range(steps - 1, -1, -1):
        x = inputs[:, t]
        grad_post = grad_y if g_out is None else grad_y + g_out[:, t]
        grad_a_t = grad_post * drive_derivative(out[t], x, spec.input_mode)
        grad_a[t] = grad_a_t
        if dx is not None:
            dx[t] = grad_post.masked_fill(x == 0, 0) if spec.clamp_input else grad_a_t
        has_prev = t > 0
        how, ckpt = state(t - 1) if has_prev else (NONE, None)
        col_sums = stage(how, ckpt, True, pre(t), out[t], grad_a_t, same_at(t), pre(t - 1) if has_prev else dpre,
                         out[t - 1] if has_prev else dpre, alpha, eta, spec.clip, dpre, dalpha, deta, w,
                         mod(t), mod(t - 1 if has_prev else t), dmod)
        # dpre: dL/dy_t through step t's pre-activation y_t @ (w + alpha * H_t) and its update.
        grad_y = dpre if same_episode is None else dpre * same_episode[:, t, None]
        grad_y = grad_y + col_sums + through_mod(t - 1) if has_prev else grad_y.clone()
    return grad_y, grad_h


class Episode(torch.autograd.Function):
    """The whole sequence as one autograd node (see the module docstring), run chunk by
    chunk of `spec.chunk` episodes: each chunk goes through all its steps (and, in the
    backward pass, all of them backwards) before the next, so that a chunk's Hebb stays
    in the cache. One chunk of the whole batch is the `batch` schedule. A neuromodulated
    rule's read-out (w_mod `[N, k]`, b_mod `[k]`; None for the other rules) is applied
    inside, at every step. h0, e0: the initial traces (e0: a two-trace rule's second; None:
    zeros). Returns the activities and the final traces."""

    @staticmethod
    def forward(ctx, inputs, same_episode, y0, h0, e0, w, alpha, eta, w_mod, b_mod, spec: EpisodeSpec, save: bool):
        ctx.set_materialize_grads(False)
        b, steps, n = inputs.shape
        chunks = [slice(start, min(start + spec.chunk, b)) for start in range(0, b, spec.chunk)]
        out = inputs.new_empty(steps, b, n)
        modulator = None if w_mod is None else _Modulator(w_mod, b_mod)
        mods = None if modulator is None else inputs.new_empty(steps, b, w_mod.shape[1])

        def part(t: Tensor | None, sl: slice) -> Tensor | None:
            return None if t is None else t[sl]

        resets = None if same_episode is None else (same_episode == 0).any(0).tolist()
        given = None if h0 is None else (h0, e0)[:spec.traces]  # plastic_rnn_fused gives both or neither
        ckpts, clipped, h_final = [], [], None
        for sl in chunks:
            h_chunk, ckpts_chunk, clipped_chunk = _forward_chunk(
                inputs[sl], part(same_episode, sl), y0[sl], None if given is None else tuple(t[sl] for t in given), w,
                alpha, eta, modulator, spec, save, out[:, sl], None if mods is None else mods[:, sl], resets)
            ckpts.append(ckpts_chunk)
            clipped.append(clipped_chunk)
            if len(chunks) == 1:
                h_final = h_chunk
            else:
                if h_final is None:
                    h_final = tuple(inputs.new_empty(b, n, n) for _ in h_chunk)
                for whole, chunk in zip(h_final, h_chunk, strict=True):
                    whole[sl] = chunk
            del h_chunk, ckpts_chunk
        out_btn = out.transpose(0, 1).contiguous()
        if save:
            ctx.spec, ctx.chunks, ctx.ckpts, ctx.clipped, ctx.out = spec, chunks, ckpts, clipped, out
            ctx.h0_given, ctx.e0_given = h0 is not None, e0 is not None
            ctx.save_for_backward(inputs, same_episode, y0, w, alpha, eta, w_mod, b_mod, mods, *h_final)
        return (out_btn, *h_final)

    @staticmethod
    def backward(ctx, g_out, *g_h):
        inputs, same_episode, y0, w, alpha, eta, w_mod, b_mod, mods, *h_final = ctx.saved_tensors
        spec, out = ctx.spec, ctx.out
        steps, b, n = out.shape
        modulator = None if w_mod is None else _Modulator(w_mod, b_mod)
        dalpha, deta = (torch.zeros(n, n, dtype=out.dtype, device=out.device) for _ in range(2))
        grad_a = torch.empty(steps, b, n, dtype=out.dtype, device=out.device)
        dx = torch.empty_like(grad_a) if ctx.needs_input_grad[0] else None
        dact = None if mods is None else torch.empty_like(mods)
        dy0 = torch.empty(b, n, dtype=out.dtype, device=out.device)
        dh0 = None  # the gradients of the initial traces, where one was given

        def part(t: Tensor | None, sl: slice) -> Tensor | None:
            return None if t is None else t[sl]

        for sl, ckpts, clipped in zip(ctx.chunks, ctx.ckpts, ctx.clipped, strict=True):
            dy0[sl], dh0_chunk = _backward_chunk(
                spec, ckpts, clipped, inputs[sl], part(same_episode, sl), y0[sl], out[:, sl], w, alpha, eta, modulator,
                None if mods is None else mods[:, sl], tuple(t[sl] for t in h_final), part(g_out, sl),
                tuple(part(g, sl) for g in g_h), grad_a[:, sl], None if dx is None else dx[:, sl],
                None if dact is None else dact[:, sl], dalpha, deta)
            if ctx.h0_given:
                if len(ctx.chunks) == 1:
                    dh0 = dh0_chunk
                else:
                    if dh0 is None:
                        dh0 = tuple(torch.empty_like(t) for t in h_final)
                    for whole, chunk in zip(dh0, dh0_chunk, strict=True):
                        whole[sl] = chunk
            del dh0_chunk
        pres = torch.cat([y0.unsqueeze(0), out[:-1]])  # the presynaptic activity of each step
        if same_episode is not None:
            pres = pres * same_episode.t().unsqueeze(-1)
        dw = pres.reshape(-1, n).t() @ grad_a.reshape(-1, n)
        dalpha = dalpha.sum() if alpha.dim() == 0 else dalpha
        deta = None if not spec.reads_eta else (deta.sum() if eta.dim() == 0 else deta)
        dw_mod = db_mod = None
        if dact is not None:
            # M(t) read the activity of step t itself: out[t] (before any reset mask).
            dw_mod = out.reshape(-1, n).t() @ dact.reshape(-1, dact.shape[-1])
            db_mod = dact.sum((0, 1))
        dh0, de0 = (None, None) if dh0 is None else (dh0[0], dh0[1] if ctx.e0_given else None)
        return (None if dx is None else dx.transpose(0, 1), None, dy0, dh0, de0, dw, dalpha, deta, dw_mod, db_mod,
                None, None)
