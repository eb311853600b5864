"""The C++ kernels (`kernels_cpp.cpp`, CPU, float32 / float64: one pass over Hebb per
step), their build and their loader.

    kernels = cpp_kernels(get_rule("oja"))   # None, with one warning, where they cannot be built
    seconds, ok = build_kernels(["oja"])     # the same, ahead of time, timed

The rule is not written in C++ by hand: `cpp_source` puts the rule's `PlasticRule`
functor, translated from its elementwise functions (`plasticity/rules/elementwise.py`),
and the backward modes of `contract.py` before `kernels_cpp.cpp`, and one module per
rule is compiled with torch's `cpp_extension` (about a minute the first time, then
loaded from the on-disk cache every process of the machine shares). The build holds a
file lock, clears the lock a killed builder left, and stops its compilers when
interrupted (see `_build_lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import time
import warnings
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from plasticity.nn.fused.contract import CKPT, INVERT, NONE, fused_rules, say_once
from plasticity.rules import Rule, get_rule
from plasticity.rules.elementwise import cpp_rule

SOURCE = Path(__file__).with_name("kernels_cpp.cpp")
# -fopenmp: ATen's parallel_for is an inline `#pragma omp parallel` (torch's OpenMP
# backend); without it the kernels run on one thread. -march=native: see module_name.
CFLAGS = ["-O3", "-march=native", "-fopenmp"]


class CppKernels:
    """The kernel contract (`contract.Kernels`) for one rule, calling its compiled module."""

    name = "cpp"

    def __init__(self, module):
        self.module = module
        self._params = None

    def _rows(self, alpha: Tensor, eta: Tensor, w: Tensor | None, n: int) -> tuple:
        """(alpha rows, row stride, eta rows, row stride, w) for the C++ calls, converted
        once per episode rather than at every step: kept while the same tensors, unchanged
        (their `_version`), come back."""
        given = (alpha, eta, w)
        versions = tuple(None if t is None else t._version for t in given)
        cached = self._params
        if cached is None or cached[1] != versions or any(a is not b for a, b in zip(cached[0], given, strict=True)):
            self._params = cached = (given, versions, (*_as_rows(alpha, n), *_as_rows(eta, n), _as_matrix(w)))
        return cached[2]

    def forward_step(self, h, h_next, pre, post, alpha, eta, clip, want_z, w=None, mod=None, e=None, e_next=None):
        a, a_rs, et, e_rs, wm = self._rows(alpha, eta, w, pre.shape[1])
        clipped, z = self.module.forward_step(h, h_next, pre.contiguous(), post.contiguous(), a, a_rs, et, e_rs,
                                              float(clip or 0.0), want_z, wm, _contiguous(mod), e, e_next)
        return clipped, (z if want_z else None)

    def backward_stage(self, h, grad_h, ckpt, prev, stage, pre, post, grad_a, same_episode, pre_p, post_p, alpha, eta,
                       clip, dpre, dalpha, deta, w=None, mod=None, mod_p=None, dmod=None, e=None, grad_e=None,
                       ckpt_e=None):
        a, a_rs, et, e_rs, wm = self._rows(alpha, eta, w, h.shape[1])
        return self.module.backward_stage(h, grad_h, ckpt, prev, stage, pre.contiguous(), post.contiguous(),
                                          grad_a.contiguous(), same_episode.contiguous(), pre_p.contiguous(),
                                          post_p.contiguous(), a, a_rs, et, e_rs, float(clip or 0.0), dpre, dalpha,
                                          deta, wm, _contiguous(mod), _contiguous(mod_p), dmod, e, grad_e, ckpt_e)


def _as_rows(param: Tensor, n: int) -> tuple[Tensor, int]:
    """alpha / eta as rows for the C++ kernels: `[N, N]` (row stride N) or one value
    broadcast along a single row of N (row stride 0)."""
    if param.dim() == 0:
        return param.detach().reshape(1).expand(n).contiguous(), 0
    return param.detach().contiguous(), n


def _as_matrix(w: Tensor | None) -> Tensor | None:
    """w for the C++ kernels: detached and contiguous (None stays None)."""
    return None if w is None else w.detach().contiguous()


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def cpp_kernels(rule: Rule) -> CppKernels | None:
    """The C++ kernels for `rule`. Returns None, with one warning, where they cannot be
    built (no compiler, or a form that does not translate to C++)."""
    try:
        return CppKernels(_cpp_module(rule.name, cpp_source(rule)))
    except Exception as exc:  # noqa: BLE001 -- any build failure means: use the torch kernels
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        say_once(f"plasticity: C++ kernels for rule {rule.name!r} unavailable ({first}); using the slower "
                 "torch-op kernels (install a C++ compiler and ninja to build them)")
        return None


def build_kernels(rules=None) -> tuple[float, bool]:
    """Build the C++ kernels of `rules` (names; default every rule with a fused form) now,
    or load them from the on-disk cache that every process of this machine shares, so
    that no training clock, `--max-minutes` budget or speed metric includes compile time.
    Returns (seconds it took, whether all are available); where they cannot be built the
    torch-op kernels run instead (`cpp_kernels` warns once). Runs decide through
    `backend.prepare`, which calls this."""
    names = fused_rules() if rules is None else list(rules)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the caller reports the outcome in one line
        ok = all(cpp_kernels(get_rule(name)) is not None for name in names)
    return time.perf_counter() - start, ok


def cpp_source(rule: Rule) -> str:
    """The C++ source compiled for `rule`: the backward modes and its generated
    `PlasticRule` functor, then `kernels_cpp.cpp` (FormError if the rule's form does not
    translate)."""
    modes = f"enum Prev {{ kNone = {NONE}, kInvert = {INVERT}, kCkpt = {CKPT} }};\n"
    return "#include <torch/extension.h>\n" + modes + cpp_rule(rule) + SOURCE.read_text()


def module_name(rule_name: str, source: str) -> str:
    """The compiled module's name (and build folder's). The key holds the generated rule
    code: an edited rule compiles anew. -march=native: the build is specific to this CPU,
    so its name is too."""
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else platform.processor()
    flags = next((line for line in cpu.splitlines() if line.startswith("flags")), cpu)
    key = hashlib.sha1(source.encode() + flags.encode() + torch.__version__.encode()
                       + " ".join(CFLAGS).encode()).hexdigest()[:12]
    return f"plasticity_fused_{rule_name}_{key}"


@cache
def _cpp_module(rule_name: str, source: str):
    """Compile (first use of this source, about a minute; then cached on disk) and load."""
    from torch.utils import cpp_extension

    _ninja_on_path()
    name = module_name(rule_name, source)
    if not _built(cpp_extension, name):
        print(f"plasticity: building the fused C++ kernels for rule {rule_name!r} (first use of this rule's code "
              "on this machine, about a minute)", file=sys.stderr, flush=True)
    with _build_lock(cpp_extension, name):
        return cpp_extension.load_inline(name=name, cpp_sources=[source], extra_cflags=CFLAGS,
                                         extra_ldflags=["-fopenmp"], verbose=False)


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


@contextlib.contextmanager
def _build_lock(cpp_extension, name: str):
    """Hold an flock on the module's build folder while torch builds or loads it, and clear
    the `lock` file torch leaves there when its holder is killed mid-build (a SIGTERM during
    the first minute of a preemptible job): torch waits for that file forever, so every
    later run hung silently. The flock is released by the kernel when its holder dies, and
    every builder of these modules takes it first, so a `lock` file seen while holding it
    belongs to a dead process."""
    try:
        import fcntl

        folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # noqa: BLE001 -- no flock (not POSIX) or torch's private helper changed: torch's own lock only
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "plasticity.flock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (folder / "lock").unlink(missing_ok=True)
        try:
            yield
        except KeyboardInterrupt:
            _stop_compilers(folder)
            raise


def _stop_compilers(folder: Path) -> None:
    """SIGTERM the compiler processes building in `folder` (Linux /proc). Stopped mid-build
    (a preempted job), torch kills its `ninja` but not the compilers ninja started, which
    would go on using the machine's cores for a minute; the flock held on the folder means
    that every process naming it is this build's."""
    import signal

    needle = str(folder).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and needle in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGTERM)
        except (OSError, ValueError):
            continue  # gone already, or not ours to signal
