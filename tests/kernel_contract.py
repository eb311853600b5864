"""The contract every kernel set of the fused path keeps (`fused.TorchKernels` is its
readable reference): one forward step, and one backward stage in every mode (stage on /
off x no previous step / inverted / stored / stored zeros), for any rule's elementwise
form, modulated rules with M(t), two-trace rules with their second trace (never inverted).
Used by the C++ tests (test_rule_forms.py) and the Triton tests (test_fused_triton.py,
under the interpreter)."""

from __future__ import annotations

import itertools

import torch

from plasticity.nn.fused import CKPT, INVERT, NONE, TorchKernels
from plasticity.rules.elementwise import two_traces
from tests.conftest import assert_close


def check_kernel_contract(kernels, rule, clip, shared: bool, b: int = 3, n: int = 13, rtol: float = 1e-9) -> None:
    """`kernels` against the torch-op kernels of `rule` (a `Rule`), float64, on a size that
    is not a multiple of any tile or row block (N = 13 by default)."""
    ref = TorchKernels(rule.elementwise)
    two = two_traces(rule.elementwise)
    g = torch.Generator().manual_seed(3)
    rand = lambda *s, scale=1.0: scale * torch.randn(s, generator=g, dtype=torch.float64)  # noqa: E731
    pre, post, pre_p, post_p, ga = (torch.tanh(rand(b, n, scale=2.0)) for _ in range(5))
    mod, mod_p = (torch.tanh(rand(b, n, scale=2.0)) if rule.modulated else None for _ in range(2))
    alpha = rand(scale=0.5) if shared else rand(n, n, scale=0.5)
    eta = torch.tensor(0.2, dtype=torch.float64) if shared else 0.05 + 0.3 * torch.rand(n, n, generator=g,
                                                                                        dtype=torch.float64)
    h, e = rand(b, n, n, scale=0.3), rand(b, n, n, scale=2.0)
    for given, in_place in itertools.product((True, False), (False, True) if two else (False,)):
        outs = []
        for k in (kernels, ref):
            h_in, e_in = (h.clone(), e.clone()) if given else (None, None)
            h_next = h_in if in_place and given else torch.empty_like(h)
            second = {}
            if two:
                second = {"e": e_in, "e_next": e_in if in_place and given else torch.empty_like(e)}
            clipped, z = k.forward_step(h_in, h_next, pre, post, alpha, eta, clip, True, None, mod, **second)
            outs.append((h_next, z, clipped, second.get("e_next")))
        where = f"(state given: {given}, in place: {in_place})"
        assert_close(outs[0][0], outs[1][0], rtol, name=f"h_next {where}")
        assert_close(outs[0][1], outs[1][1], rtol, name=f"z {where}")
        assert outs[0][2] == outs[1][2], "clipped"
        if two:
            assert_close(outs[0][3], outs[1][3], rtol, name=f"e_next {where}")
    keep = torch.tensor([1.0, 0.0, 1.0][:b] + [1.0] * max(0, b - 3), dtype=torch.float64)
    ckpt, ckpt_e = rand(b, n, n, scale=0.3), rand(b, n, n, scale=2.0)
    modes = ((NONE, None), (CKPT, ckpt), (CKPT, None)) if two else ((NONE, None), (INVERT, None), (CKPT, ckpt),
                                                                   (CKPT, None))
    for stage, (prev, ck) in itertools.product((False, True), modes):
        g_in, ge_in, got = rand(b, n, n), rand(b, n, n), {}
        for name, k in (("kernels", kernels), ("torch", ref)):
            hh, gg, ee, gge = h.clone(), g_in.clone(), e.clone(), ge_in.clone()
            dpre = torch.zeros(b, n, dtype=torch.float64)
            dalpha, deta = torch.ones(n, n, dtype=torch.float64), torch.ones(n, n, dtype=torch.float64)
            dmod = torch.full((b, n), 7.0, dtype=torch.float64) if rule.modulated else None
            second = {"e": ee, "grad_e": gge, "ckpt_e": None if ck is None else ckpt_e} if two else {}
            col = k.backward_stage(hh, gg, ck, prev, stage, pre, post, ga, keep, pre_p, post_p, alpha, eta, clip,
                                   dpre, dalpha, deta, None, mod, mod_p, dmod, **second)
            # One eta: the caller sums deta (the C++ kernels put the total in its first element).
            got[name] = (hh, gg, dpre, dalpha, deta.sum() if shared else deta, col, dmod,
                         ee if two else None, gge if two else None)
        where = f"(stage={stage}, prev={prev}, ckpt={ck is not None})"
        for what, a, c in zip(("h", "g", "dpre", "dalpha", "deta", "col", "dmod", "e", "grad_e"), got["kernels"],
                              got["torch"], strict=True):
            if c is not None:
                assert_close(a, c, rtol, name=f"{what} {where}")
