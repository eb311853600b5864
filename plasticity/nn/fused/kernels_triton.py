"""The fused path's two per-step kernels in Triton: its GPU kernel set.

    kernels = triton_kernels(get_rule("oja"))   # None where triton does not import
    clipped, z = kernels.forward_step(h, h_next, pre, post, alpha, eta, clip, True)

The kernel contract (`contract.Kernels`; `kernels_torch.TorchKernels` is its readable
reference): `forward_step` writes `H_{t+1}` into `h_next` (which may be `h`) and
returns whether clipping changed a value and the next plastic product `z` `[B, N]`;
`backward_stage` backpropagates one step and rebuilds `H_{t-1}` in place.

**The rule is not written here.** The kernels are built per rule from its
`Elementwise` functions (`plasticity/rules/<rule>.py`): each is wrapped with
`triton.jit` and passed to the kernels as a `tl.constexpr` function argument, so a
change to the rule file changes these kernels too. The rule is bound when the kernel set
is made.

**Storage and accumulation.** Hebb (`h`, `h_next`, `g`, checkpoints) may be stored in
float32, bfloat16 or float64; every element is loaded, computed on in float32 (float64
for float64 storage) and rounded once when stored. The plastic product `z`, the row /
column sums and the batch sums into `dalpha` / `deta` are accumulated in float32 (float64).

**Work split.** Forward: one program per (episode b, block of columns j, band of rows)
walks down its rows, so `z_j = sum_i post_i alpha_ij H_ij` is summed in registers per band
(bands only where B x column blocks are too few to fill the GPU; their sums added after). Backward: one
program per (block of rows, block of columns) walks over the batch, so the batch sums
`dalpha`, `deta` stay in registers; the row sums (`dpre`) and column sums (`col`) are
written per block and added up afterwards (deterministic, no atomics).

**Without a GPU.** With `TRITON_INTERPRET=1` set before triton is imported, the same
kernels run in Triton's interpreter on CPU tensors (slowly: tests use N ~ 16).
"""

import builtins
import dataclasses
import os
import types
from functools import cache

import torch
from torch import Tensor

from plasticity.nn.fused.contract import CKPT, CKPT_ZERO, INVERT, NONE, plus_w
from plasticity.rules.elementwise import FIELDS, FIELDS2

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU-only install: `triton_kernels()` returns None
    triton = tl = None

_KERNEL_FIELDS = tuple(f for f in dict.fromkeys(FIELDS + FIELDS2) if f != "update_e")
"""The rule functions the backward kernel takes (as upper-case constexpr arguments): both
forms' fields but `update_e`, which only the forward kernel calls."""


def available() -> bool:
    return triton is not None


def interpreted() -> bool:
    """Whether triton runs kernels in its interpreter (CPU tensors) instead of on a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def jit_elementwise(fn):
    """`triton.jit` of a rule's elementwise function.

    The rule modules do not import triton, and the compiler and interpreter resolve the
    function's names (they look for `triton.language` there) in its globals: the same
    code object is rebound to globals holding `tl` and nothing else (the body uses only
    its arguments). The source, which `triton.jit` parses, is still the rule file's."""
    g = {"tl": tl, "__builtins__": builtins}
    clone = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__module__, clone.__qualname__, clone.__doc__ = fn.__module__, fn.__qualname__, fn.__doc__
    return triton.jit(clone)


if triton is not None:

    @triton.jit
    def _rounded(x, dtype: tl.constexpr):
        """x (float32 / float64) in the storage dtype. bfloat16: rounded to nearest even by
        hand -- GPUs round in this cast, but Triton's interpreter (where the tests run)
        truncates, which biases every stored Hebb towards zero."""
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return x.to(dtype)

    @triton.jit
    def _update(UPDATE: tl.constexpr, h, x, p, q, eta, m, TWO: tl.constexpr):
        """The rule's `update` of H at a tile: of (h, x) for a two-trace rule, of h otherwise."""
        if TWO:
            return UPDATE(h, x, p, q, eta, m)
        else:
            return UPDATE(h, p, q, eta, m)

    @triton.jit
    def _through(D: tl.constexpr, E_D: tl.constexpr, g, gx, h, x, p, q, eta, m, TWO: tl.constexpr):
        """g * d h'/d arg (+ gx * d x'/d arg for a two-trace rule): the gradient that flows
        through one update into one of its arguments, D = the rule's d_<arg>, E_D = e_d_<arg>."""
        if TWO:
            return g * D(h, x, p, q, eta, m) + gx * E_D(h, x, p, q, eta, m)
        else:
            return g * D(h, p, q, eta, m)

    @triton.jit
    def _modulation(ptr, offsets, valid, MOD: tl.constexpr, ACC: tl.constexpr, BJ: tl.constexpr):
        """M(t) of the columns `offsets` (`[BJ]`) of a neuromodulated rule; zeros otherwise
        (the rule's functions take it and do not read it)."""
        if MOD:
            return tl.load(ptr + offsets, mask=valid, other=0.0).to(ACC)
        else:
            return tl.zeros([BJ], dtype=ACC)

    # Plain functions here, wrapped with `triton.jit` by `_compiled` at first use (one pair
    # per mode; triton's own library follows TRITON_INTERPRET as it was at its import).

    def _forward_kernel(h_ptr, hn_ptr, x_ptr, xn_ptr, pre_ptr, post_ptr, alpha_ptr, eta_ptr, mod_ptr, z_ptr,
                        flag_ptr, batch, n, rows, s_ai, s_aj, s_ei, s_ej, clip_ptr,
                        UPDATE: tl.constexpr, UPDATE_E: tl.constexpr, HAS_H: tl.constexpr, CLIP: tl.constexpr,
                        WANT_Z: tl.constexpr, MOD: tl.constexpr, TWO: tl.constexpr, ACC: tl.constexpr,
                        BI: tl.constexpr, BJ: tl.constexpr):
        """Program (b, jb, s) over rows I = [s rows, (s + 1) rows):
        H_{t+1}[b, I, J] = rule(H_t[b, I, J], pre[b, I], post[b, J], eta, M(t)[b, J]) (clamped),
        z[s, b, J] = sum_I post[b, i] alpha[i, J] H_{t+1}[b, i, J]; flag[s, b, jb] = any clamped.
        TWO (a two-trace rule): the second trace X (`x_ptr` -> `xn_ptr`) is read beside Hebb,
        the rule's functions take (h, x, pre, post, eta, mod), and X_{t+1} = UPDATE_E(...)."""
        b = tl.program_id(0)
        jb = tl.program_id(1)
        s = tl.program_id(2)
        j = jb * BJ + tl.arange(0, BJ)
        jm = j < n
        row = tl.cast(b, tl.int64) * n
        base = row * n
        q = tl.load(post_ptr + row + j, mask=jm, other=0.0).to(ACC)
        mod = _modulation(mod_ptr, row + j, jm, MOD, ACC, BJ)
        clip = tl.load(clip_ptr).to(ACC)
        z = tl.zeros([BJ], dtype=ACC)
        hits = tl.zeros([BJ], dtype=tl.int32)
        for i0 in range(s * rows, tl.minimum(s * rows + rows, n), BI):
            i = i0 + tl.arange(0, BI)
            im = i < n
            m = im[:, None] & jm[None, :]
            off = base + i[:, None] * n + j[None, :]
            p = tl.load(pre_ptr + row + i, mask=im, other=0.0).to(ACC)
            eta = tl.load(eta_ptr + i[:, None] * s_ei + j[None, :] * s_ej, mask=m, other=0.0).to(ACC)
            if HAS_H:
                h = tl.load(h_ptr + off, mask=m, other=0.0).to(ACC)
            else:
                h = tl.zeros([BI, BJ], dtype=ACC)
            if TWO:
                if HAS_H:
                    x = tl.load(x_ptr + off, mask=m, other=0.0).to(ACC)
                else:
                    x = tl.zeros([BI, BJ], dtype=ACC)
                new = UPDATE(h, x, p[:, None], q[None, :], eta, mod[None, :])
                new_x = UPDATE_E(h, x, p[:, None], q[None, :], eta, mod[None, :])
                tl.store(xn_ptr + off, _rounded(new_x, xn_ptr.dtype.element_ty), mask=m)
            else:
                new = UPDATE(h, p[:, None], q[None, :], eta, mod[None, :])
            if CLIP:
                hits += tl.sum((((new > clip) | (new < -clip)) & m).to(tl.int32), axis=0)
                new = tl.minimum(tl.maximum(new, -clip), clip)
            stored = _rounded(new, hn_ptr.dtype.element_ty)
            tl.store(hn_ptr + off, stored, mask=m)
            if WANT_Z:
                # z from the stored (rounded) values: the backward sees those.
                a = tl.load(alpha_ptr + i[:, None] * s_ai + j[None, :] * s_aj, mask=m, other=0.0).to(ACC)
                q_next = tl.load(post_ptr + row + i, mask=im, other=0.0).to(ACC)
                z += tl.sum(q_next[:, None] * a * stored.to(ACC), axis=0)
        part = tl.cast(s * batch + b, tl.int64)
        if WANT_Z:
            tl.store(z_ptr + part * n + j, z, mask=jm)
        if CLIP:
            tl.store(flag_ptr + part * tl.num_programs(1) + jb, tl.max(hits, axis=0))

    def _backward_kernel(h_ptr, g_ptr, ck_ptr, x_ptr, gx_ptr, ckx_ptr, pre_ptr, post_ptr, ga_ptr, keep_ptr,
                         prep_ptr, postp_ptr, mod_ptr, modp_ptr, alpha_ptr, eta_ptr, dpre_ptr, col_ptr, dmod_ptr,
                         dalpha_ptr, deta_ptr, batch, n, s_ai, s_aj, s_ei, s_ej, clip_ptr,
                         UPDATE: tl.constexpr, INVERSE: tl.constexpr, D_H: tl.constexpr, D_PRE: tl.constexpr,
                         D_POST: tl.constexpr, D_ETA: tl.constexpr, D_MOD: tl.constexpr, D_E: tl.constexpr,
                         E_D_H: tl.constexpr, E_D_E: tl.constexpr, E_D_PRE: tl.constexpr, E_D_POST: tl.constexpr,
                         E_D_ETA: tl.constexpr, E_D_MOD: tl.constexpr,
                         STAGE: tl.constexpr, PREV: tl.constexpr, CLIP: tl.constexpr, MOD: tl.constexpr,
                         TWO: tl.constexpr, ACC: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
        """Program (ib, jb) over the tile [I, J] of every episode b (see `TorchKernels.backward_stage`):
        STAGE: dpre[jb, b, I] = sum_J (g d_pre + alpha H ga), dalpha += sum_b pre H ga,
               g <- (g d_h + alpha pre ga) keep[b];
        PREV:  H <- H_{t-1} (inverse / checkpoint / zero), g masked where the update clamped,
               col[ib, b, J] = sum_I g d_post, deta += sum_b g d_eta, and (MOD: a neuromodulated
               rule, whose step t reads M(t) `mod`, step t-1 M(t-1) `modp`)
               dmod[ib, b, J] = sum_I g d_mod.
        TWO (a two-trace rule, never inverted): the second trace X and its gradient gx
        (`x_ptr`, `gx_ptr`; stored state `ckx_ptr`) go through the same pass, with the
        derivatives of X(t+1) (E_D_*) beside those of H(t+1) (D_*, D_E: by X(t)).
        PREV is contract.py's NONE / INVERT / CKPT / CKPT_ZERO, compared below as the
        literals 0 / 1 / 2 / 3 (a kernel reads no plain Python globals)."""
        ib = tl.program_id(0)
        jb = tl.program_id(1)
        i = ib * BI + tl.arange(0, BI)
        j = jb * BJ + tl.arange(0, BJ)
        im = i < n
        jm = j < n
        m = im[:, None] & jm[None, :]
        tile = i[:, None] * n + j[None, :]
        a = tl.load(alpha_ptr + i[:, None] * s_ai + j[None, :] * s_aj, mask=m, other=0.0).to(ACC)
        eta = tl.load(eta_ptr + i[:, None] * s_ei + j[None, :] * s_ej, mask=m, other=0.0).to(ACC)
        clip = tl.load(clip_ptr).to(ACC)
        dalpha = tl.zeros([BI, BJ], dtype=ACC)
        deta = tl.zeros([BI, BJ], dtype=ACC)
        # 64-bit offsets: B N^2 passes 2^31 at B = 32, N = 8192.
        n64 = tl.cast(n, tl.int64)
        for b in range(batch):
            row = b * n64
            off = row * n + tile
            h = tl.load(h_ptr + off, mask=m, other=0.0).to(ACC)
            g = tl.load(g_ptr + off, mask=m, other=0.0).to(ACC)
            gh = g
            x, gx = h, g  # a two-trace rule's X and its gradient (read only when TWO)
            if TWO:
                x = tl.load(x_ptr + off, mask=m, other=0.0).to(ACC)
                gx = tl.load(gx_ptr + off, mask=m, other=0.0).to(ACC)
            gxn = gx
            if STAGE:
                p = tl.load(pre_ptr + row + i, mask=im, other=0.0).to(ACC)[:, None]
                q = tl.load(post_ptr + row + j, mask=jm, other=0.0).to(ACC)[None, :]
                ga = tl.load(ga_ptr + row + j, mask=jm, other=0.0).to(ACC)[None, :]
                keep = tl.load(keep_ptr + b).to(ACC)
                mj = _modulation(mod_ptr, row + j, jm, MOD, ACC, BJ)[None, :]
                dp = tl.sum(_through(D_PRE, E_D_PRE, g, gx, h, x, p, q, eta, mj, TWO) + a * h * ga, axis=1)
                gh = (_through(D_H, E_D_H, g, gx, h, x, p, q, eta, mj, TWO) + a * p * ga) * keep
                if TWO:
                    gxn = _through(D_E, E_D_E, g, gx, h, x, p, q, eta, mj, TWO) * keep
                tl.store(dpre_ptr + (jb * batch + b) * n64 + i, dp, mask=im)
                dalpha += p * h * ga
            if PREV != 0:
                pp = tl.load(prep_ptr + row + i, mask=im, other=0.0).to(ACC)[:, None]
                qp = tl.load(postp_ptr + row + j, mask=jm, other=0.0).to(ACC)[None, :]
                mp = _modulation(modp_ptr, row + j, jm, MOD, ACC, BJ)[None, :]
                if PREV == 1:
                    hp = INVERSE(h, pp, qp, eta, mp)  # one-trace rules only
                elif PREV == 2:
                    hp = tl.load(ck_ptr + off, mask=m, other=0.0).to(ACC)
                else:
                    hp = tl.zeros([BI, BJ], dtype=ACC)
                xp = hp
                if TWO:
                    if PREV == 2:
                        xp = tl.load(ckx_ptr + off, mask=m, other=0.0).to(ACC)
                if CLIP:
                    if PREV != 1:
                        # A clamped element passed no gradient (clamped steps are stored, never inverted).
                        raw = _update(UPDATE, hp, xp, pp, qp, eta, mp, TWO)
                        gh = tl.where((raw > clip) | (raw < -clip), 0.0, gh)
                c = tl.sum(_through(D_POST, E_D_POST, gh, gxn, hp, xp, pp, qp, eta, mp, TWO), axis=0)
                tl.store(col_ptr + (ib * batch + b) * n64 + j, c, mask=jm)
                if MOD:
                    dm = tl.sum(_through(D_MOD, E_D_MOD, gh, gxn, hp, xp, pp, qp, eta, mp, TWO), axis=0)
                    tl.store(dmod_ptr + (ib * batch + b) * n64 + j, dm, mask=jm)
                deta += _through(D_ETA, E_D_ETA, gh, gxn, hp, xp, pp, qp, eta, mp, TWO)
                tl.store(h_ptr + off, _rounded(hp, h_ptr.dtype.element_ty), mask=m)
                if TWO:
                    tl.store(x_ptr + off, _rounded(xp, x_ptr.dtype.element_ty), mask=m)
            tl.store(g_ptr + off, _rounded(gh, g_ptr.dtype.element_ty), mask=m)
            if TWO:
                tl.store(gx_ptr + off, _rounded(gxn, gx_ptr.dtype.element_ty), mask=m)
        if STAGE:
            acc = tl.load(dalpha_ptr + tile, mask=m, other=0.0).to(ACC) + dalpha
            tl.store(dalpha_ptr + tile, _rounded(acc, dalpha_ptr.dtype.element_ty), mask=m)
        if PREV != 0:
            acc = tl.load(deta_ptr + tile, mask=m, other=0.0).to(ACC) + deta
            tl.store(deta_ptr + tile, _rounded(acc, deta_ptr.dtype.element_ty), mask=m)


def _strides(param: Tensor) -> tuple[Tensor, int, int]:
    """alpha / eta as (tensor, row stride, column stride): a single value is read through
    strides 0, so the kernels have one code path for shared and per-connection values."""
    if param.dim() == 0:
        return param.detach().reshape(1), 0, 0
    p = param.detach().contiguous()
    return p, p.stride(0), p.stride(1)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(n: int) -> tuple[int, int]:
    """Tile sides: 64 x 64 on a GPU (16 x 16 at least); 16 x 16 at most in the interpreter,
    so that the small sizes of the tests still span several tiles with ragged edges."""
    side = min(16, triton.next_power_of_2(n)) if interpreted() else min(64, max(16, triton.next_power_of_2(n)))
    return side, side


def _row_splits(b: int, n: int, bi: int, bj: int, device: torch.device) -> tuple[int, int]:
    """(splits, rows per split) of the forward's rows: enough programs to fill a GPU
    (about 4 per multiprocessor) when B x column blocks alone are too few (small batches);
    at most 2 in the interpreter, so that the tests cover the split. Rows per split are
    a multiple of the tile side."""
    blocks = triton.cdiv(n, bi)
    if interpreted() or device.type != "cuda":
        splits = min(blocks, 2)
    else:
        want = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        splits = max(1, min(blocks, triton.cdiv(want, b * triton.cdiv(n, bj))))
    rows = triton.cdiv(blocks, splits) * bi
    return triton.cdiv(n, rows), rows


class TritonKernels:
    """The kernel contract (`contract.Kernels`) for one rule, in Triton (CUDA tensors;
    CPU tensors under `TRITON_INTERPRET=1`)."""

    name = "triton"

    def __init__(self, rule):
        if rule.elementwise is None:
            raise ValueError(f"rule {rule.name!r} has no elementwise form: the Triton kernels cannot run it")
        self.rule = rule
        self._clips: dict = {}

    def _clip(self, clip, like: Tensor) -> Tensor:
        """The clip value as a one-element tensor in the arithmetic's dtype (a Python float
        argument would reach the kernel as float32, off by 1e-8 in float64 runs); cached."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (float(clip or 0.0), dtype, like.device)
        if key not in self._clips:
            self._clips[key] = torch.tensor([key[0]], dtype=dtype, device=like.device)
        return self._clips[key]

    def _kernels(self):
        interpret = interpreted()
        return _compiled(interpret), _jitted(self.rule.elementwise, interpret)

    def forward_step(self, h, h_next, pre, post, alpha, eta, clip, want_z, w=None, mod=None, e=None, e_next=None):
        b, n = pre.shape
        (a, s_ai, s_aj), (et, s_ei, s_ej) = _strides(alpha), _strides(eta)
        bi, bj = _blocks(n)
        splits, rows = _row_splits(b, n, bi, bj, pre.device)
        grid = (b, triton.cdiv(n, bj), splits)
        (forward, _), f = self._kernels()
        acc = torch.float64 if h_next.dtype == torch.float64 else torch.float32
        z = torch.empty(splits, b, n, dtype=acc, device=pre.device) if want_z else pre
        flags = torch.zeros(splits * b * grid[1], dtype=torch.int32, device=pre.device) if clip else z
        two = e_next is not None
        forward[grid](h_next if h is None else h, h_next, (e if e is not None else e_next) if two else h_next,
                      e_next if two else h_next, pre.contiguous(), post.contiguous(), a, et,
                      pre if mod is None else mod.contiguous(), z, flags, b, n, rows, s_ai, s_aj, s_ei, s_ej,
                      self._clip(clip, h_next), UPDATE=f["update"], UPDATE_E=f.get("update_e", f["update"]),
                      HAS_H=h is not None, CLIP=bool(clip), WANT_Z=bool(want_z), MOD=mod is not None, TWO=two,
                      ACC=_acc(h_next.dtype), BI=bi, BJ=bj)
        clipped = bool(flags.any()) if clip else False
        if not want_z:
            return clipped, None
        return clipped, plus_w(z.sum(0).to(pre.dtype), post, w)  # + post @ w: one GEMM (cuBLAS)

    def backward_stage(self, h, g, ckpt, prev, stage, pre, post, ga, keep, pre_p, post_p, alpha, eta, clip,
                       dpre, dalpha, deta, w=None, mod=None, mod_p=None, dmod=None, e=None, grad_e=None, ckpt_e=None):
        b, n = pre_p.shape
        (a, s_ai, s_aj), (et, s_ei, s_ej) = _strides(alpha), _strides(eta)
        two = grad_e is not None
        if two and prev == INVERT:
            raise ValueError("a two-trace rule's states are recomputed, not inverted: pass prev=CKPT")
        bi, bj = _blocks(n)
        grid = (triton.cdiv(n, bi), triton.cdiv(n, bj))
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        dpre_part = torch.empty(grid[1], b, n, dtype=acc, device=h.device) if stage else dpre
        col_part = torch.empty(grid[0], b, n, dtype=acc, device=h.device) if prev else dpre
        modulated = mod is not None
        dmod_part = torch.empty(grid[0], b, n, dtype=acc, device=h.device) if modulated and prev else dpre
        mode = CKPT_ZERO if prev == CKPT and ckpt is None else prev
        (_, backward), f = self._kernels()
        # A constexpr function must be given even where its branch is never taken: the
        # functions a rule does not have (d_mod of an unmodulated rule, the inverse of a
        # two-trace rule, the second trace's of a one-trace rule) are given as d_h.
        fns = {name: f.get(name, f["d_h"]) for name in _KERNEL_FIELDS}
        backward[grid](h, g, h if ckpt is None else ckpt, e if two else h, grad_e if two else g,
                       (h if ckpt_e is None else ckpt_e) if two else h, pre.contiguous(), post.contiguous(),
                       ga.contiguous(), keep.contiguous(), pre_p.contiguous(), post_p.contiguous(),
                       mod.contiguous() if modulated else pre, mod_p.contiguous() if modulated else pre,
                       a, et, dpre_part, col_part, dmod_part, dalpha, deta, b, n, s_ai, s_aj, s_ei, s_ej,
                       self._clip(clip, h), **{name.upper(): fn for name, fn in fns.items()},
                       STAGE=bool(stage), PREV=mode, CLIP=bool(clip), MOD=modulated, TWO=two, ACC=_acc(h.dtype),
                       BI=bi, BJ=bj)
        if dmod is not None and modulated:
            if prev == NONE:
                dmod.zero_()
            else:
                dmod.copy_(dmod_part.sum(0))
        if stage:
            dpre.copy_(dpre_part.sum(0))
            if w is not None:
                dpre.addmm_(ga, w.t())
        if prev == NONE:
            return torch.zeros_like(pre_p)
        return col_part.sum(0).to(pre_p.dtype)


@cache
def _compiled(interpret: bool) -> tuple:
    """(forward, backward) kernels: `triton.jit` decides at wrapping time whether to
    interpret, so one pair is made per mode."""
    # Sizes and strides are not specialised on (Triton would compile a variant for values
    # equal to 1 or divisible by 16): one compiled kernel serves every N, B and alpha / eta mode.
    ints = ["batch", "n", "s_ai", "s_aj", "s_ei", "s_ej"]
    return (triton.jit(_forward_kernel, do_not_specialize=[*ints, "rows"]),
            triton.jit(_backward_kernel, do_not_specialize=ints))


@cache
def _jitted(elementwise, interpret: bool) -> dict:
    """The rule's elementwise functions as Triton functions (made once per rule and mode)."""
    return {f.name: jit_elementwise(getattr(elementwise, f.name)) for f in dataclasses.fields(elementwise)
            if getattr(elementwise, f.name) is not None}


def triton_kernels(rule) -> TritonKernels | None:
    """The Triton kernel set for `rule`, or None where triton does not import or the
    rule has no elementwise form."""
    if triton is None or rule.elementwise is None:
        return None
    return TritonKernels(rule)
