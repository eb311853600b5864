"""The contract between the episode and its kernel sets, and between a rule and the
fused path: the names every other file of this folder shares, defined once.

A kernel set (`kernels_torch.TorchKernels`, `kernels_cpp.CppKernels`,
`kernels_triton.TritonKernels`) is an object with a `name` and the two methods of
`Kernels`; a rule can run fused when `supports(rule)`: its elementwise form
(`plasticity.rules.Elementwise`) is complete, translates to C++ and is consistent.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Protocol

import torch
from torch import Tensor

from plasticity.rules import RULES, Rule
from plasticity.rules.elementwise import FormError, check_elementwise, cpp_rule, two_traces

BACKENDS = ("auto", "cpp", "torch", "triton")
"""The kernel sets a caller may ask for (`auto`: see `backend.get_kernels`)."""
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
"""Hebb storage the Triton kernels take (they compute in float32, float64 for float64)."""
CPP_DTYPES = (torch.float32, torch.float64)
"""What the C++ kernels compute in (CPU tensors only)."""

NONE, INVERT, CKPT, CKPT_ZERO = 0, 1, 2, 3
"""How a backward stage gets `H_{t-1}` (its `prev`): not at all (t = 0), by inverting the
rule, from a stored state (`ckpt`; None: zeros). CKPT_ZERO is CKPT with the stored state
the zero initial Hebb: the episode passes CKPT and `ckpt=None`; a kernel set may use
CKPT_ZERO inside (the Triton kernels take it as their mode)."""


class Kernels(Protocol):
    """The two per-step kernels of one rule, on one device.

    `forward_step` writes `H_{t+1}` into `h_next` (which may be `h`; `h` None: zeros) and
    returns (whether clipping changed a value, z), z `[B, N]` the next step's recurrent
    pre-activation `post @ (w + alpha * h_next)` (the plastic part alone where `w` is
    None; None unless `want_z`).

    `backward_stage` backpropagates one step and rebuilds `H_{t-1}` in place. With `stage`,
    step t: `grad_h` holds dL/dH_{t+1} and becomes dL/dH_t, `dpre` receives dL/dpre (with
    `grad_a @ w^T` where `w` is given), `dalpha` accumulates. With `prev` != NONE, step
    t-1: `h` becomes `H_{t-1}` (inverted, or `ckpt`), `deta` accumulates, and the column
    sums `sum_i grad_h * d_post` `[B, N]` are returned (zeros for NONE). `same_episode`
    `[B]` is 0 where an episode resets after step t-1.
    Neuromodulated rules: `mod` `[B, N]` is M(t) of the update the stage makes, `mod_p`
    that of step t-1, and `dmod` `[B, N]` receives d loss / d M(t-1) (column sums of
    `grad_h * d_mod`; zeros without a step t-1). Two-trace rules (`Elementwise2`): the
    second trace E in `e` / `e_next`, its gradient in `grad_e`, its stored state in
    `ckpt_e`; never inverted (`prev=INVERT` is refused with a `ValueError`).
    """

    name: str

    def forward_step(self, h: Tensor | None, h_next: Tensor, pre: Tensor, post: Tensor, alpha: Tensor, eta: Tensor,
                     clip: float | None, want_z: bool, w: Tensor | None = None, mod: Tensor | None = None,
                     e: Tensor | None = None, e_next: Tensor | None = None) -> tuple[bool, Tensor | None]: ...

    def backward_stage(self, h: Tensor, grad_h: Tensor, ckpt: Tensor | None, prev: int, stage: bool, pre: Tensor,
                       post: Tensor, grad_a: Tensor, same_episode: Tensor, pre_p: Tensor, post_p: Tensor,
                       alpha: Tensor, eta: Tensor, clip: float | None, dpre: Tensor, dalpha: Tensor, deta: Tensor,
                       w: Tensor | None = None, mod: Tensor | None = None, mod_p: Tensor | None = None,
                       dmod: Tensor | None = None, e: Tensor | None = None, grad_e: Tensor | None = None,
                       ckpt_e: Tensor | None = None) -> Tensor: ...


def plus_w(z: Tensor, post: Tensor, w: Tensor | None) -> Tensor:
    """z + post @ w (z itself where w is None): the kernels' recurrent pre-activation."""
    return z if w is None else torch.addmm(z, post, w)


@cache
def _form_problem(rule: Rule) -> str | None:
    """The first problem of a rule's elementwise form (None: the fused path can run it)."""
    try:
        cpp_rule(rule)
    except FormError as exc:
        return str(exc)
    problems = check_elementwise(rule)
    return problems[0] if problems else None


def supports(rule: Rule, notice: bool = True) -> bool:
    """Whether the fused path can run `rule`: it has an elementwise form that is complete,
    translatable and consistent (`check_elementwise`). The others use the plain autograd
    loop, with a one-line notice on stderr (once per rule) when `notice`."""
    if rule.elementwise is None or len(rule.traces) != (2 if two_traces(rule.elementwise) else 1):
        problem = f"rule {rule.name!r} has no elementwise form (update, inverse, derivatives)"
    else:
        problem = _form_problem(rule)
    if problem and notice:
        say_once(f"plasticity: {problem}; it runs on the autograd path (impl='autograd')")
    return problem is None


def fused_rules() -> list[str]:
    """Names of the registered rules the fused path runs, in registration order."""
    return [name for name, rule in RULES.items() if supports(rule, notice=False)]


_NOTICES: set[str] = set()


def say_once(message: str) -> None:
    """Print a one-line notice on stderr, once per process."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        print(message, file=sys.stderr, flush=True)
