"""Which kernel set runs an episode, and building it before a run needs it.

    kernels = get_kernels("auto", device, dtype, rule)   # Triton on CUDA, C++ on CPU, else torch ops
    chosen_backend()                                     # "cpp": what the last episode ran
    prepare(cfg, device)                                 # build now the C++ kernels a run of cfg will use

`prepare` is the one place that decides whether a run builds kernels ahead of time:
training (before its clock starts), the sweep driver (once, before any trial) and
serving (before the first request) call it. Whatever it does not build is built at
first use by `get_kernels` (a minute inside the first episode).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import NamedTuple

import torch

from plasticity.errors import ConfigError
from plasticity.nn.fused.contract import BACKENDS, CPP_DTYPES, TRITON_DTYPES, Kernels, supports
from plasticity.nn.fused.kernels_cpp import build_kernels, cpp_kernels
from plasticity.nn.fused.kernels_torch import TorchKernels
from plasticity.rules import Rule, get_rule

_chosen: dict[tuple[str, str, torch.dtype], None] = {}
"""The kernel sets this process has run, in order: (name, device type, dtype)."""


def get_kernels(backend: str, device: torch.device, dtype: torch.dtype, rule: Rule) -> Kernels:
    """`auto`: Triton on CUDA (where triton imports), the C++ kernels for float32/float64
    on CPU where they build, else torch ops. `rule` (a `Rule`): the kernels are built
    from its elementwise form."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown fused backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        kernels = _triton_kernels(rule, device, dtype)
        if kernels is not None:
            return _announce(kernels, device, dtype)
        if backend == "triton":
            raise ConfigError(f"the triton backend cannot run {dtype} on {device} here (it needs triton installed "
                              "and CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors): use backend='auto'")
    cpp_ok = _cpp_runs(device, dtype)
    if backend == "cpp" and not cpp_ok:
        raise ConfigError(f"the cpp backend runs float32/float64 on CPU, got {dtype} on {device}: use backend='auto'")
    if backend in ("auto", "cpp") and cpp_ok:
        kernels = cpp_kernels(rule)
        if kernels is not None:
            return _announce(kernels, device, dtype)
        if backend == "cpp":
            raise ConfigError("the C++ kernels could not be built (see the warning above): use backend='torch'")
    return _announce(TorchKernels(rule.elementwise), device, dtype)


def _cpp_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the C++ kernels take this device and dtype (what `auto` picks them for)."""
    return device.type == "cpu" and dtype in CPP_DTYPES


def _triton_kernels(rule: Rule, device: torch.device, dtype: torch.dtype) -> Kernels | None:
    """The Triton kernels for `rule` where they can run here: CUDA tensors, or CPU tensors
    under Triton's interpreter (`TRITON_INTERPRET=1`); else None."""
    # Imported here: importing triton costs seconds, and a CPU run never needs it.
    from plasticity.nn.fused.kernels_triton import interpreted, triton_kernels

    if rule is None or dtype not in TRITON_DTYPES:
        return None
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        return None
    return triton_kernels(rule)


def _announce(kernels: Kernels, device: torch.device, dtype: torch.dtype) -> Kernels:
    """Print the kernel choice once per (kernels, device, dtype): one line on stderr."""
    key = (kernels.name, device.type, dtype)
    if key not in _chosen:
        _chosen[key] = None
        print(f"plasticity: fused kernels: {kernels.name} ({device.type}, {str(dtype).removeprefix('torch.')})",
              file=sys.stderr, flush=True)
    return kernels


def chosen_backend() -> str | None:
    """The kernel set the fused path used last in this process (`triton`, `cpp`, `torch`),
    or None before its first episode: what the training loop logs as `perf/backend`."""
    return next(reversed(_chosen))[0] if _chosen else None


class Prepared(NamedTuple):
    """What `prepare` did."""

    rules: tuple[str, ...]
    """The rules whose C++ kernels it built or loaded (empty: the run needs none now)."""
    seconds: float
    """How long that took."""
    ok: bool
    """Whether all of them are available (False: the run uses the slower torch-op kernels,
    and a one-line warning has said why)."""


def prepare(cfg, device: torch.device | str = "cpu", *, rules: Iterable[str] | None = None) -> Prepared:
    """Build (or load from the on-disk cache) now the C++ kernels that a run of `cfg` on
    `device` will use, so that no training clock, time budget or first request pays for
    the compile. A run uses them when `cfg` (any object with `plastic`, `impl` and `rule` as
    in `plasticity.config.ModelConfig`) is a plastic network on the fused path,
    its rule has a fused form, and `device` is a CPU (the `auto` backend, float32: on CUDA
    the Triton kernels compile at first launch). `rules`: the rules to build instead of
    `cfg.rule` (a sweep, whose trials draw the rule: every one they may draw)."""
    device = torch.device(device)
    fused = getattr(cfg, "plastic", False) and getattr(cfg, "impl", None) == "fused"
    if not fused or not _cpp_runs(device, torch.float32):
        return Prepared((), 0.0, True)
    names = tuple(name for name in ([cfg.rule] if rules is None else rules) if supports(get_rule(name), notice=False))
    if not names:
        return Prepared((), 0.0, True)
    seconds, ok = build_kernels(names)
    return Prepared(names, seconds, ok)
