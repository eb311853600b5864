"""Fast path of `PlasticRNN`: a fused step and a backward pass that rebuilds Hebb
backward in time, so training memory does not grow with steps x N^2.

    out, (y, hebb) = plastic_rnn_fused(inputs, w, alpha, eta, rule="hebb")

Same signature idea as the naive reference (`naive.py`) and the plain autograd loop
(`plastic.py`), which stay as the references the tests compare against.

**Forward.** Step t computes `y_t = act(y_{t-1} @ w + z_t, x_t)`, where
`z_t = y_{t-1} @ (alpha * H_t)`. The Hebb update of step t and the plastic product of
step t+1 read the same tensor, so one pass over `H_t` writes `H_{t+1} = rule(H_t,
y_{t-1}, y_t)` and sums `z_{t+1} = y_t @ (alpha * H_{t+1})` (`forward_step`). Nothing
of size N^2 is kept per step: the pass overwrites `H_t` in place, or, where `H_t` must
be kept (stored, see below; or with clipping, which decides that only after the step),
writes into the buffer freed by the step before.

**Backward.** Only the activities `y` `[B, T, N]`, the final Hebb and a few exact Hebb
states are stored. Walking time backwards, one pass per step (`backward_stage`)
  - backpropagates step t (gradient w.r.t. `y_{t-1}`, `alpha`, and `dL/dH_t`), and
  - rebuilds `H_{t-1}` from `H_t` by inverting the update of step t-1 -- decaying Hebb:
    `H_{t-1} = (H_t - eta * pre post^T) / (1 - eta)`; Oja:
    `H_{t-1} = (H_t - eta * post (pre ...)) / (1 - eta * post_j^2)` -- and accumulates
    that step's rule gradients (w.r.t. `y_{t-1}` as post, and `eta`).
The inversion is exact algebra but not exact arithmetic: each inverted step multiplies
the rounding error by at most `1 / min|1 - eta|` (Hebb) or `1 / min|1 - eta post^2|`
(Oja). So the forward pass stores the exact state `H_t` (a *checkpoint*) instead of
relying on inversion where
  - the product of those factors since the last checkpoint would pass
    `max_amplification` (e.g. `eta = 1`: every step is stored),
  - clipping changed a value at step t (a clamped update cannot be inverted),
  - an episode resets at step t+1 (the state before the reset is lost), or
  - `checkpoint_every = K > 0` asks for one every K steps (bounds the error further).
Memory is then `(3 + checkpoints) x B N^2` instead of several `B N^2` per step.
Rules without an inverse (modulated ones) use the plain path instead (`supports`).

**Kernels.** `fused_cpu.cpp` (C++, compiled on first use and cached, one pass over each
`[B, N, N]` tensor per step; float32 and float64 on CPU) and the same two functions
written with torch ops (`TorchKernels`, the reference for the C++ kernels, and the path
on CUDA and for other dtypes). If the C++ build fails, a one-line warning is printed and
the torch-op kernels are used.

Memory traffic per step (the floor the benchmark compares with): forward reads `H_t`
and writes `H_{t+1}`; backward reads `H_t` and `dL/dH_{t+1}` and writes `H_{t-1}` and
`dL/dH_t`: six `B x N x N` transfers per step in all.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from plasticity.errors import ConfigError, ShapeError

FUSED_RULES = {"hebb": False, "oja": True}
"""Rules the fast path can invert, mapped to `is_oja`."""
BACKENDS = ("auto", "cpp", "torch")
NONE, INVERT, CKPT = 0, 1, 2
"""How a backward pass gets `H_{t-1}`: not at all (t = 0), by inversion, from a checkpoint."""
DEFAULT_MAX_AMPLIFICATION = {torch.float64: 1e6, torch.float32: 10.0}
"""Largest growth of the rounding error allowed between checkpoints (other dtypes: 10).
float32 at 10: a 106-step episode with eta 0.01 stores no state, with eta 0.1 four."""

SOURCE = Path(__file__).with_name("fused_cpu.cpp")
# -fopenmp: ATen's parallel_for is an inline `#pragma omp parallel` (torch's OpenMP
# backend); without it the kernels run on one thread. -march=native: see cpp_kernels.
CFLAGS = ["-O3", "-march=native", "-fopenmp"]


# ------------------------------------------------------------------------- kernels
def _as_rows(param: Tensor, n: int) -> tuple[Tensor, int]:
    """alpha / eta as rows for the C++ kernels: `[N, N]` (row stride N) or one value
    broadcast along a single row of N (row stride 0)."""
    if param.dim() == 0:
        return param.detach().reshape(1).expand(n).contiguous(), 0
    return param.detach().contiguous(), n


class TorchKernels:
    """The two per-step kernels written with torch ops (any device, any float dtype).

    Same contract as the C++ kernels: `forward_step` writes `h_next`, `backward_stage`
    updates `h`, `g`, `dpre`, `dalpha`, `deta` in place. More passes over memory than the
    C++ ones; this is the readable reference and the CUDA path."""

    name = "torch"

    @staticmethod
    def _rule(h: Tensor, pre: Tensor, post: Tensor, eta: Tensor, oja: bool) -> Tensor:
        p, q = pre.unsqueeze(-1), post.unsqueeze(-2)
        return h + eta * q * (p - q * h) if oja else h + eta * (p * q - h)

    def forward_step(self, h, h_next, pre, post, alpha, eta, clip, oja, want_z):
        if h is None:
            h = torch.zeros_like(h_next)
        raw = self._rule(h, pre, post, eta, oja)
        clipped = False
        if clip:
            clipped = bool((raw.abs() > clip).any())
            raw = raw.clamp(-clip, clip)
        h_next.copy_(raw)
        if not want_z:
            return clipped, None
        if alpha.dim() == 0:
            return clipped, alpha * torch.bmm(post.unsqueeze(1), h_next).squeeze(1)
        return clipped, torch.bmm(post.unsqueeze(1), alpha * h_next).squeeze(1)

    def backward_stage(self, h, g, ckpt, prev, stage, pre, post, ga, keep, pre_p, post_p, alpha, eta, clip, oja,
                       dpre, dalpha, deta):
        gh = g
        if stage:
            q, gaj, p = post.unsqueeze(1), ga.unsqueeze(1), pre.unsqueeze(2)
            f = 1 - eta * q * q if oja else 1 - eta
            dpre.copy_((g * eta * q).sum(-1) + (alpha * h * gaj).sum(-1))
            dalpha += (p * h * gaj).sum(0)
            gh = (g * f + alpha * p * gaj) * keep.view(-1, 1, 1)
        col = torch.zeros_like(pre_p)
        if prev != NONE:
            pp, qp = pre_p.unsqueeze(2), post_p.unsqueeze(1)
            if prev == INVERT:
                hp = (h - eta * qp * pp) / (1 - eta * qp * qp) if oja else (h - eta * pp * qp) / (1 - eta)
            else:
                hp = torch.zeros_like(h) if ckpt is None else ckpt
            if clip and prev == CKPT:
                gh = gh * (self._rule(hp, pre_p, post_p, eta, oja).abs() <= clip)
            col = (gh * eta * (pp - 2 * qp * hp)).sum(1) if oja else (gh * eta * pp).sum(1)
            deta += (gh * qp * (pp - qp * hp)).sum(0) if oja else (gh * (pp * qp - hp)).sum(0)
            h.copy_(hp)
        g.copy_(gh)
        return col


class CppKernels:
    """The C++ kernels of `fused_cpu.cpp` (CPU, float32 / float64): one pass per step."""

    name = "cpp"

    def __init__(self, module):
        self.module = module

    def forward_step(self, h, h_next, pre, post, alpha, eta, clip, oja, want_z):
        n = pre.shape[1]
        (a, a_rs), (e, e_rs) = _as_rows(alpha, n), _as_rows(eta, n)
        clipped, z = self.module.forward_step(h, h_next, pre.contiguous(), post.contiguous(), a, a_rs, e, e_rs,
                                              float(clip or 0.0), oja, want_z)
        return clipped, (z if want_z else None)

    def backward_stage(self, h, g, ckpt, prev, stage, pre, post, ga, keep, pre_p, post_p, alpha, eta, clip, oja,
                       dpre, dalpha, deta):
        n = h.shape[1]
        (a, a_rs), (e, e_rs) = _as_rows(alpha, n), _as_rows(eta, n)
        return self.module.backward_stage(h, g, ckpt, prev, stage, pre.contiguous(), post.contiguous(),
                                          ga.contiguous(), keep.contiguous(), pre_p.contiguous(),
                                          post_p.contiguous(), a, a_rs, e, e_rs, float(clip or 0.0), oja, dpre,
                                          dalpha, deta)


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the `ninja` package installed with plasticity puts it
    in the environment's bin folder, which is not on PATH when the environment's python
    is run without activating it (e.g. Ray workers)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _built(cpp_extension, name: str) -> bool:
    """Whether torch's extension cache already holds this build (only decides a notice)."""
    try:
        return any(Path(cpp_extension._get_build_directory(name, verbose=False)).glob("*.so"))
    except Exception:  # noqa: BLE001 -- a private helper of torch; the build itself does not need it
        return True


@cache
def cpp_kernels() -> CppKernels | None:
    """Compile (first use, about a minute; then cached on disk) and load the C++ kernels.
    Returns None, with one warning, where that is impossible."""
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()

        cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else platform.processor()
        flags = next((line for line in cpu.splitlines() if line.startswith("flags")), cpu)
        # -march=native: the build is specific to this CPU, so its name is too.
        key = hashlib.sha1(SOURCE.read_bytes() + flags.encode() + torch.__version__.encode()
                           + " ".join(CFLAGS).encode()).hexdigest()[:12]
        name = f"plasticity_fused_{key}"
        if not _built(cpp_extension, name):
            print("plasticity: building the fused C++ kernels (first use on this machine, about a minute)",
                  file=sys.stderr, flush=True)
        module = cpp_extension.load(name=name, sources=[str(SOURCE)],
                                    extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # noqa: BLE001 -- any build failure means: use the torch kernels
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        warnings.warn(f"plasticity: C++ kernels unavailable ({first}); using the slower torch-op kernels "
                      "(install a C++ compiler and ninja to build them)", RuntimeWarning, stacklevel=3)
        return None
    return CppKernels(module)


def get_kernels(backend: str, device: torch.device, dtype: torch.dtype):
    """`auto`: the C++ kernels for float32/float64 on CPU where they build, else torch ops."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown fused backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    cpp_ok = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    if backend == "cpp" and not cpp_ok:
        raise ConfigError(f"the cpp backend runs float32/float64 on CPU, got {dtype} on {device}: use backend='auto'")
    if backend in ("auto", "cpp") and cpp_ok:
        kernels = cpp_kernels()
        if kernels is not None:
            return kernels
        if backend == "cpp":
            raise ConfigError("the C++ kernels could not be built (see the warning above): use backend='torch'")
    return TorchKernels()


# ------------------------------------------------------------------------- the episode
@dataclass(frozen=True)
class _Spec:
    oja: bool
    clamp_input: bool
    clip: float | None
    every: int
    max_amp: float
    kernels: object


def _activation(a: Tensor, x: Tensor, clamp_input: bool) -> Tensor:
    return torch.where(x != 0, x, torch.tanh(a)) if clamp_input else torch.tanh(a + x)


def _dact(post: Tensor, x: Tensor, clamp_input: bool) -> Tensor:
    """d post / d a (the pre-activation) given post."""
    d = 1 - post * post
    return d.masked_fill(x != 0, 0) if clamp_input else d


class _Amplification:
    """Bound on how much inverting one step can grow the rounding error in Hebb."""

    def __init__(self, eta: Tensor, oja: bool):
        self.oja, self.eta = oja, eta.detach()
        if eta.dim() == 0:
            self.lo = self.hi = self.eta
        else:
            self.lo, self.hi = self.eta.amin(0), self.eta.amax(0)  # per column j
        self.hebb = 1 / max(1 - float(self.eta.max()), 0.0) if float(self.eta.max()) < 1 else math.inf

    def __call__(self, post: Tensor) -> float:
        if not self.oja:
            return self.hebb
        q2 = post * post
        lo, hi = 1 - self.hi * q2, 1 - self.lo * q2
        worst = torch.where(lo * hi <= 0, torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs())).min()
        worst = float(worst)
        return math.inf if worst == 0 else 1 / worst


class _Episode(torch.autograd.Function):
    """The whole sequence as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, inputs, keep, y0, h0, w, alpha, eta, spec: _Spec, save: bool):
        ctx.set_materialize_grads(False)
        k, (b, steps, n) = spec.kernels, inputs.shape
        out = inputs.new_empty(steps, b, n)
        y = y0 if keep is None else y0 * keep[:, :1]
        hcur = None if h0 is None else (h0 if keep is None else h0 * keep[:, 0].view(-1, 1, 1))
        if hcur is None:
            z = torch.zeros_like(y)
        elif alpha.dim() == 0:
            z = alpha * torch.bmm(y.unsqueeze(1), hcur).squeeze(1)
        else:
            z = torch.bmm(y.unsqueeze(1), alpha * hcur).squeeze(1)
        amplification = _Amplification(eta, spec.oja) if save else None
        resets = None if keep is None else (keep == 0).any(0).tolist()
        ckpts, spare, growth = {0: hcur}, None, 1.0
        for t in range(steps):
            post = _activation(torch.addmm(z, y, w), inputs[:, t], spec.clamp_input)
            out[t] = post
            last = t == steps - 1
            reset_next = resets is not None and not last and resets[t + 1]
            # Whether H_t must outlive this step: H_0 is the caller's (or None); a stored
            # state is decided before the update, except for clipping (known only after).
            amp = amplification(post) if save and t > 0 else 1.0
            keep_h = t == 0 or (save and (reset_next or (spec.every and t % spec.every == 0)
                                          or growth * amp > spec.max_amp))
            in_place = not keep_h and not spec.clip
            if in_place:
                h_next = hcur
            else:
                h_next = spare if spare is not None else torch.empty(b, n, n, dtype=inputs.dtype,
                                                                     device=inputs.device)
                spare = None
            clipped, z = k.forward_step(hcur, h_next, y, post, alpha, eta, spec.clip, spec.oja, not last)
            if t > 0 and save and (keep_h or clipped):
                ckpts[t], growth = hcur, 1.0
            elif t > 0:
                growth = growth * amp
                if not in_place:
                    spare = hcur
            hcur, y = h_next, post
            if resets is not None and not last and resets[t + 1]:
                kk = keep[:, t + 1]
                y, z = y * kk[:, None], z * kk[:, None]
                hcur.mul_(kk.view(-1, 1, 1))
        out_btn = out.transpose(0, 1).contiguous()
        if save:
            ctx.spec, ctx.ckpts, ctx.out, ctx.h0_given = spec, ckpts, out, h0 is not None
            ctx.save_for_backward(inputs, keep, y0, w, alpha, eta, hcur)
        return out_btn, hcur

    @staticmethod
    def backward(ctx, g_out, g_h):
        inputs, keep, y0, w, alpha, eta, h_final = ctx.saved_tensors
        spec, ckpts, out, k = ctx.spec, ctx.ckpts, ctx.out, ctx.spec.kernels
        steps, b, n = out.shape
        ones = torch.ones(b, dtype=out.dtype, device=out.device)
        keep_t = (lambda t: ones) if keep is None else (lambda t: keep[:, t].contiguous())

        def pre(t: int) -> Tensor:
            y = y0 if t == 0 else out[t - 1]
            return y if keep is None else y * keep[:, t, None]

        def mode(t: int) -> int:
            return CKPT if t in ckpts else INVERT

        h = h_final.clone()
        g = torch.zeros_like(h) if g_h is None else g_h.contiguous().clone()
        dalpha, deta = (torch.zeros(n, n, dtype=out.dtype, device=out.device) for _ in range(2))
        dpre = torch.empty(b, n, dtype=out.dtype, device=out.device)
        ga_all = torch.empty(steps, b, n, dtype=out.dtype, device=out.device)
        dx = torch.empty_like(ga_all) if ctx.needs_input_grad[0] else None
        # The first pass only rebuilds H_{T-1} and takes the last update's rule gradients.
        carry = k.backward_stage(h, g, ckpts.get(steps - 1), mode(steps - 1), False, dpre, dpre, dpre, ones,
                                 pre(steps - 1), out[steps - 1], alpha, eta, spec.clip, spec.oja, dpre, dalpha, deta)
        for t in range(steps - 1, -1, -1):
            x = inputs[:, t]
            gpost = carry if g_out is None else carry + g_out[:, t]
            ga = gpost * _dact(out[t], x, spec.clamp_input)
            ga_all[t] = ga
            if dx is not None:
                dx[t] = gpost.masked_fill(x == 0, 0) if spec.clamp_input else ga
            has_prev = t > 0
            col = k.backward_stage(h, g, ckpts.get(t - 1), mode(t - 1) if has_prev else NONE, True, pre(t), out[t],
                                   ga, keep_t(t), pre(t - 1) if has_prev else dpre,
                                   out[t - 1] if has_prev else dpre, alpha, eta, spec.clip, spec.oja, dpre,
                                   dalpha, deta)
            carry = torch.addmm(dpre, ga, w.t())
            if keep is not None:
                carry = carry * keep[:, t, None]
            if has_prev:
                carry = carry + col
        pres = torch.stack([pre(t) for t in range(steps)])
        dw = pres.reshape(-1, n).t() @ ga_all.reshape(-1, n)
        dalpha = dalpha.sum() if alpha.dim() == 0 else dalpha
        deta = deta.sum() if eta.dim() == 0 else deta
        dh0 = g if ctx.h0_given else None
        return (None if dx is None else dx.transpose(0, 1), None, carry, dh0, dw, dalpha, deta, None, None)


def supports(rule) -> bool:
    """Whether the fast path can run `rule` (the others use the plain autograd loop)."""
    return rule.name in FUSED_RULES and not rule.modulated and len(rule.traces) == 1


def plastic_rnn_fused(inputs: Tensor, w: Tensor, alpha: Tensor, eta: Tensor, *, rule: str = "hebb",
                      input_mode: str = "add", clip: float | None = None,
                      initial_state: tuple[Tensor, Tensor | None] | None = None, reset: Tensor | None = None,
                      checkpoint_every: int = 0, max_amplification: float | None = None,
                      backend: str = "auto") -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The fully recurrent plastic network over `inputs` `[B, T, N]` (see the module docstring).

    w `[N, N]`, alpha `[N, N]` or `[]`, eta `[]` or `[N, N]`; `initial_state` = (y `[B, N]`,
    Hebb `[B, N, N]` or None for zeros); `reset` `[B, T]` zeroes y and Hebb before the
    marked steps. Returns (activities `[B, T, N]`, final (y `[B, N]`, Hebb `[B, N, N]`)).
    """
    if rule not in FUSED_RULES:
        raise ConfigError(f"the fused path has no inverse for rule {rule!r}: use one of "
                          f"{', '.join(FUSED_RULES)} or the plain path")
    if inputs.dim() != 3 or inputs.shape[-1] != w.shape[0]:
        raise ShapeError(f"inputs must be [B, T, {w.shape[0]}], got {tuple(inputs.shape)}")
    b, steps, n = inputs.shape
    if steps == 0:
        raise ShapeError("inputs must have at least one step (T > 0)")
    y0, h0 = (None, None) if initial_state is None else initial_state
    y0 = inputs.new_zeros(b, n) if y0 is None else y0
    keep = None if reset is None else (1 - reset.to(inputs.dtype)).contiguous()
    kernels = get_kernels(backend, inputs.device, inputs.dtype)
    max_amp = max_amplification or DEFAULT_MAX_AMPLIFICATION.get(inputs.dtype, 10.0)
    spec = _Spec(FUSED_RULES[rule], input_mode == "clamp", clip, checkpoint_every, max_amp, kernels)
    tensors = (inputs, y0, h0, w, alpha, eta)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    out, hebb = _Episode.apply(inputs, keep, y0, h0, w, alpha, eta, spec, save)
    return out, (out[:, -1], hebb)


def build_kernels() -> tuple[float, bool]:
    """Build the C++ kernels now (or load them from the on-disk cache that every process of
    this machine shares), so that no training clock, `--max-minutes` budget or speed metric
    includes compile time. Returns (seconds it took, whether they are available); where
    they cannot be built the torch-op kernels run instead (`cpp_kernels` warns once)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the caller reports the outcome in one line
        ok = cpp_kernels() is not None
    return time.perf_counter() - start, ok
