"""Fast path of `PlasticRNN`: a fused step and a backward pass that rebuilds Hebb
backward in time, so training memory does not grow with steps x N^2.

    out, (y, hebb) = plastic_rnn_fused(inputs, w, alpha, eta, rule="hebb")

Same signature idea as the naive reference (`naive.py`) and the plain autograd loop
(`plastic.py`), which stay as the references the tests compare against. The maths and the
algorithm (forward pass, inverting the rule backwards, when exact states are stored, the
memory traffic, the chunked schedule) are in `plasticity/rules/README.md`, "Running the
rules backwards". Nothing here is specific to a rule: the kernels are built from the
rule's elementwise form (`plasticity.rules.Elementwise`): the torch-op kernels call its
functions, the C++ kernels (`fused_cpu.cpp`) are compiled with its functions translated
to C++ (`plasticity/rules/elementwise.py`), one module per rule.
The Triton kernels (`fused_triton.py`, CUDA) are built from the same functions, each
wrapped with `triton.jit`. `backend="auto"` picks Triton on CUDA, C++ on CPU, torch ops
otherwise; the choice is printed once (`chosen_backend()` reads it).
"""

from __future__ import annotations

import contextlib
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
from plasticity.nn.inputs import drive_derivative, drive_neurons
from plasticity.rules import RULES, Elementwise, Elementwise2, Rule, get_rule
from plasticity.rules.base import apply_elementwise
from plasticity.rules.elementwise import FormError, check_elementwise, cpp_rule, two_traces, uses
from plasticity.rules.neuromod import modulation_signal

BACKENDS = ("auto", "cpp", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
"""Hebb storage the Triton kernels take (they compute in float32, float64 for float64)."""
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


def _as_matrix(w: Tensor | None) -> Tensor | None:
    """w for the C++ kernels: detached and contiguous (None stays None)."""
    return None if w is None else w.detach().contiguous()


class TorchKernels:
    """The two per-step kernels written with torch ops (any device, any float dtype), from
    the rule's elementwise form `form` (`plasticity.rules.Elementwise`).

    Same contract as the C++ kernels: `forward_step` writes `h_next` and returns z, the
    next step's recurrent pre-activation `post @ (w + alpha * h_next)` (the plastic part
    alone where `w` is None); `backward_stage` updates `h`, `grad_h`, `dpre`, `dalpha`,
    `deta` in place, dpre including `grad_a @ w^T` where `w` is given. Neuromodulated
    rules: `mod` `[B, N]` is M(t) of the update the step makes (the stage's), `mod_p` that
    of step t-1, and `dmod` `[B, N]` receives d loss / d M(t-1) (column sums of
    `grad_h * d_mod`, zeros without a step t-1). More passes over memory than the C++
    ones; this is the readable reference."""

    name = "torch"

    def __init__(self, form: Elementwise):
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


def plus_w(z: Tensor, post: Tensor, w: Tensor | None) -> Tensor:
    """z + post @ w (z itself where w is None): the kernels' recurrent pre-activation."""
    return z if w is None else torch.addmm(z, post, w)


class CppKernels:
    """The C++ kernels of `fused_cpu.cpp` for one rule (CPU, float32 / float64): one pass
    per step."""

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


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


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


def cpp_source(rule: Rule) -> str:
    """The C++ source compiled for `rule`: its generated `PlasticRule` functor, then
    `fused_cpu.cpp` (FormError if the rule's form does not translate)."""
    return "#include <torch/extension.h>\n" + cpp_rule(rule) + SOURCE.read_text()


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


def cpp_kernels(rule: Rule) -> CppKernels | None:
    """The C++ kernels for `rule`. Returns None, with one warning, where they cannot be
    built (no compiler, or a form that does not translate to C++)."""
    try:
        return CppKernels(_cpp_module(rule.name, cpp_source(rule)))
    except Exception as exc:  # noqa: BLE001 -- any build failure means: use the torch kernels
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        _notice(f"plasticity: C++ kernels for rule {rule.name!r} unavailable ({first}); using the slower "
                "torch-op kernels (install a C++ compiler and ninja to build them)")
        return None


def _triton_kernels(rule, device: torch.device, dtype: torch.dtype):
    """The Triton kernels for `rule` where they can run here: CUDA tensors, or CPU tensors
    under Triton's interpreter (`TRITON_INTERPRET=1`); else None."""
    from plasticity.nn import fused_triton

    if rule is None or dtype not in TRITON_DTYPES:
        return None
    if device.type != "cuda" and not (device.type == "cpu" and fused_triton.interpreted()):
        return None
    return fused_triton.triton_kernels(rule)


_chosen: dict[tuple[str, str, torch.dtype], None] = {}


def _announce(kernels, device: torch.device, dtype: torch.dtype):
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


def get_kernels(backend: str, device: torch.device, dtype: torch.dtype, rule: Rule):
    """`auto`: Triton on CUDA (where triton imports), the C++ kernels for float32/float64
    on CPU where they build, else torch ops. `rule` (a `Rule`) is needed by Triton, whose
    kernels are built from the rule's elementwise form."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown fused backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        kernels = _triton_kernels(rule, device, dtype)
        if kernels is not None:
            return _announce(kernels, device, dtype)
        if backend == "triton":
            raise ConfigError(f"the triton backend cannot run {dtype} on {device} here (it needs triton installed "
                              "and CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors): use backend='auto'")
    cpp_ok = device.type == "cpu" and dtype in (torch.float32, torch.float64)
    if backend == "cpp" and not cpp_ok:
        raise ConfigError(f"the cpp backend runs float32/float64 on CPU, got {dtype} on {device}: use backend='auto'")
    if backend in ("auto", "cpp") and cpp_ok:
        kernels = cpp_kernels(rule)
        if kernels is not None:
            return _announce(kernels, device, dtype)
        if backend == "cpp":
            raise ConfigError("the C++ kernels could not be built (see the warning above): use backend='torch'")
    return _announce(TorchKernels(rule.elementwise), device, dtype)


_NOTICES: set[str] = set()


def _notice(message: str) -> None:
    """Print a one-line notice on stderr, once per process."""
    if message not in _NOTICES:
        _NOTICES.add(message)
        print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- the schedule
CHUNK_ENV = "PLASTICITY_CHUNK_EPISODES"
"""Environment variable overriding the chunk size (episodes; 0 = the whole batch at once)."""
DEFAULT_LLC_BYTES = 32 * 2**20
AUTO_CACHE_CAP_BYTES = 96 * 2**20
"""The most cache `auto` counts on. In a cloud VM, sysfs reports the host socket's whole L3,
shared with cores (and tenants) the VM does not see: 260 MiB on a 2-core Xeon VM, where
the 15 episodes per chunk that size gives ran no faster than the batch schedule (7.0-7.9
episodes/s at N = 1001, B = 32) and the 4 that this cap gives ran 11.4-11.6 (README,
"Schedules"). A machine whose cache is below the cap is unaffected."""


@cache
def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache of cpu0 (Linux sysfs, else sysconf, else 32 MiB).
    sysfs first: in a VM, sysconf can report the host's total over all its L3 slices."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KMGkmg")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    if sizes:
        return max(sizes)
    try:
        size = os.sysconf("SC_LEVEL3_CACHE_SIZE") or os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (ValueError, OSError):
        size = 0
    return size if size and size > 0 else DEFAULT_LLC_BYTES


def chunk_episodes_for(batch: int, n: int, itemsize: int, eta_per_connection: bool,
                       requested: int | str | None = None, cache_bytes: int | None = None, traces: int = 1) -> int:
    """Episodes per chunk, in 1..batch (batch: one chunk, the `batch` schedule).

    `requested` (else the environment variable PLASTICITY_CHUNK_EPISODES; unset: `auto`):
    a number of episodes (0: the whole batch), or `auto`: as many episodes as fit in half
    the last-level cache (counted at most `AUTO_CACHE_CAP_BYTES`) beside the `[N, N]`
    tensors every episode reads (w, alpha, dalpha, and eta, deta per connection), counting
    the backward pass's two `[N, N]` tensors per episode and trace (each trace and its
    gradient), at least one. Half: at N = 1001 float32 in a 32 MiB
    cache, one episode per chunk (20 MB) ran 1.2x faster than two (28 MB) and 1.7x faster
    than the batch schedule (README, "Schedules"); the rest of the cache holds what a step
    also reads (activities, the optimiser's state, other processes on a shared machine)."""
    if requested is None:
        requested = os.environ.get(CHUNK_ENV, "").strip() or "auto"
        if isinstance(requested, str) and requested != "auto":
            if not requested.isdigit():
                raise ConfigError(f"{CHUNK_ENV}={requested!r}: give a number of episodes per chunk "
                                  "(0: the whole batch) or 'auto' (sized to the cache)")
            requested = int(requested)
    if requested != "auto":
        if not isinstance(requested, int) or requested < 0:
            raise ConfigError(f"chunk_episodes must be >= 0 (0: the whole batch) or 'auto', got {requested!r}")
        return batch if requested == 0 else min(requested, batch)
    cache_bytes = min(last_level_cache_bytes() if cache_bytes is None else cache_bytes, AUTO_CACHE_CAP_BYTES)
    shared = (3 + 2 * eta_per_connection) * n * n * itemsize
    return max(1, min(batch, (cache_bytes // 2 - shared) // (2 * traces * n * n * itemsize)))


# ------------------------------------------------------------------------- the episode
@dataclass(frozen=True)
class _KernelSpec:
    form: Elementwise | Elementwise2
    d_h_reads: frozenset
    """Which of (h, pre, post, eta, mod) the rule's d_h reads (what the error bound needs)."""
    clamp_input: bool
    """The input clamps its neurons (`clamp`) rather than adding to them (`add`)."""
    clip: float | None
    every: int
    max_amp: float
    kernels: object
    chunk: int
    """Episodes per chunk (see `_Episode`)."""
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


class _Amplification:
    """Bound on how much inverting one step can grow the rounding error in Hebb: the
    largest `1 / |d_h|` (d Hebb(t+1) / d Hebb(t), the rule's own derivative) over the
    connections, given the step's activities (and M(t))."""

    def __init__(self, form: Elementwise, eta: Tensor, reads: set[str]):
        self.form, self.eta, self.reads = form, eta.detach(), reads
        # d_h of the decaying rule reads eta alone (neuromod's nothing): one value for the episode.
        self.constant = None if reads & {"h", "pre", "post", "mod"} else self._bound(None, None, None)

    def _bound(self, pre: Tensor | None, post: Tensor | None, mod: Tensor | None) -> float:
        if "h" in self.reads:
            return math.inf  # depends on Hebb itself: no cheap bound, store every state
        zero = self.eta.new_zeros(())
        pre_i = pre.unsqueeze(-1) if pre is not None and "pre" in self.reads else zero
        post_j = post.unsqueeze(-2) if post is not None and "post" in self.reads else zero
        mod_j = mod.unsqueeze(-2) if mod is not None and "mod" in self.reads else zero
        smallest = float(torch.as_tensor(self.form.d_h(zero, pre_i, post_j, self.eta, mod_j)).abs().min())
        return math.inf if smallest == 0 else 1 / smallest

    def __call__(self, pre: Tensor, post: Tensor, mod: Tensor | None = None) -> float:
        return self.constant if self.constant is not None else self._bound(pre, post, mod)


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
                   eta: Tensor, modulator: _Modulator | None, spec: _KernelSpec, save: bool, out: Tensor,
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
    amplification = _Amplification(spec.form, eta, spec.d_h_reads) if save and not never_inverted else None
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


def recompute_segment(steps: int) -> int:
    """With clipping: an exact state is kept every this many steps (about sqrt(T)), so that
    the states of clipped steps, which inversion cannot rebuild, are recomputed from at most
    this many steps back: O(T / K + K) Hebb states per episode rather than one per step."""
    return max(1, math.ceil(math.sqrt(steps)))


def _backward_chunk(spec: _KernelSpec, ckpts: dict, clipped: set, inputs: Tensor, same_episode: Tensor | None,
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


class _Episode(torch.autograd.Function):
    """The whole sequence as one autograd node (see the module docstring), run chunk by
    chunk of `spec.chunk` episodes: each chunk goes through all its steps (and, in the
    backward pass, all of them backwards) before the next, so that a chunk's Hebb stays
    in the cache. One chunk of the whole batch is the `batch` schedule. A neuromodulated
    rule's read-out (w_mod `[N, k]`, b_mod `[k]`; None for the other rules) is applied
    inside, at every step. h0, e0: the initial traces (e0: a two-trace rule's second; None:
    zeros). Returns the activities and the final traces."""

    @staticmethod
    def forward(ctx, inputs, same_episode, y0, h0, e0, w, alpha, eta, w_mod, b_mod, spec: _KernelSpec, save: bool):
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


@cache
def _form_problem(rule_name: str, form: Elementwise | Elementwise2) -> str | None:
    """The first problem of a rule's elementwise form (None: the fused path can run it)."""
    try:
        cpp_rule(RULES[rule_name])
    except FormError as exc:
        return str(exc)
    problems = check_elementwise(RULES[rule_name])
    return problems[0] if problems else None


@cache
def _form_reads(rule: Rule) -> tuple[frozenset, bool]:
    """What the episode needs to know of a rule's form, read from its functions' source once
    per rule (not at every call): the arguments d_h reads (the error bound), and whether the
    updates read eta (else eta gets no gradient)."""
    updates = ("update", "update_e") if two_traces(rule.elementwise) else ("update",)
    return frozenset(uses(rule, "d_h")), any("eta" in uses(rule, f) for f in updates)


def supports(rule: Rule, notice: bool = True) -> bool:
    """Whether the fused path can run `rule`: it has an elementwise form that is complete,
    translatable and consistent (`check_elementwise`). The others use the plain autograd
    loop, with a one-line notice on stderr (once per rule) when `notice`."""
    if rule.elementwise is None or len(rule.traces) != (2 if two_traces(rule.elementwise) else 1):
        problem = f"rule {rule.name!r} has no elementwise form (update, inverse, derivatives)"
    else:
        problem = _form_problem(rule.name, rule.elementwise)
    if problem and notice:
        _notice(f"plasticity: {problem}; it runs on the autograd path (impl='autograd')")
    return problem is None


def plastic_rnn_fused(inputs: Tensor, w: Tensor, alpha: Tensor, eta: Tensor, *, rule: str = "hebb",
                      input_mode: str = "add", clip: float | None = None,
                      initial_state: tuple[Tensor | None, ...] | None = None, reset: Tensor | None = None,
                      segment_steps: int = 0, max_amplification: float | None = None,
                      backend: str = "auto", chunk_episodes: int | str | None = None,
                      modulator: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The fully recurrent plastic network over `inputs` `[B, T, N]` (see the module docstring).

    w `[N, N]`, alpha `[N, N]` or `[]`, eta `[]` or `[N, N]`; `initial_state` = (y `[B, N]`,
    *traces): Hebb `[B, N, N]` (and, for a two-trace rule such as `retroactive`, its second
    trace `[B, N, N]`), None for zeros; `reset` `[B, T]` zeroes y and the traces before the
    marked steps. `chunk_episodes`: the schedule, episodes per chunk run through all their
    steps before the next chunk (0: the whole batch at once; `auto`: on CPU as many as fit
    in half the last-level cache, elsewhere the whole batch; None: the environment variable
    PLASTICITY_CHUNK_EPISODES, else `auto`; see `chunk_episodes_for`). `modulator`: for a
    neuromodulated rule, (w_mod `[N, k]`, b_mod `[k]`) of `M(t) = tanh(y(t) @ w_mod + b_mod)`,
    k = 1 (one M per episode) or N (one per neuron). Returns (activities `[B, T, N]`, final
    (y `[B, N]`, Hebb `[B, N, N]`[, second trace `[B, N, N]`])).
    """
    rule_def = get_rule(rule)
    if not supports(rule_def, notice=False):
        fused = ", ".join(name for name, r in RULES.items() if supports(r, notice=False))
        raise ConfigError(f"the fused path has no elementwise form for rule {rule!r}: use one of {fused} or the "
                          "autograd path (impl='autograd')")
    if inputs.dim() != 3 or inputs.shape[-1] != w.shape[0]:
        raise ShapeError(f"inputs must be [B, T, {w.shape[0]}], got {tuple(inputs.shape)}")
    b, steps, n = inputs.shape
    if steps == 0:
        raise ShapeError("inputs must have at least one step (T > 0)")
    w_mod, b_mod = (None, None) if modulator is None else modulator
    if rule_def.modulated != (modulator is not None):
        raise ConfigError(f"rule {rule!r} " + ("is neuromodulated: pass modulator=(w_mod [N, k], b_mod [k])"
                                               if rule_def.modulated else "is not neuromodulated: pass no modulator"))
    if w_mod is not None and (w_mod.dim() != 2 or w_mod.shape[0] != n or w_mod.shape[1] not in (1, n)
                              or tuple(b_mod.shape) != (w_mod.shape[1],)):
        raise ShapeError(f"modulator must be (w_mod [{n}, 1 or {n}], b_mod [1 or {n}]), got "
                         f"({tuple(w_mod.shape)}, {tuple(b_mod.shape)})")
    traces = len(rule_def.traces)
    y0, *given = (None,) if initial_state is None else initial_state
    if len(given) > traces:
        raise ShapeError(f"initial_state must be (y, {', '.join(rule_def.traces)}) for rule {rule!r}, got "
                         f"{len(given) + 1} tensors")
    given = given + [None] * (traces - len(given))
    if any(t is not None for t in given):
        given = [inputs.new_zeros(b, n, n) if t is None else t for t in given]
    h0, e0 = given[0], given[1] if traces > 1 else None
    y0 = inputs.new_zeros(b, n) if y0 is None else y0
    same_episode = None if reset is None else (1 - reset.to(inputs.dtype)).contiguous()
    kernels = get_kernels(backend, inputs.device, inputs.dtype, rule_def)
    max_amp = max_amplification or DEFAULT_MAX_AMPLIFICATION.get(inputs.dtype, 10.0)
    if chunk_episodes is None:
        chunk_episodes = os.environ.get(CHUNK_ENV, "").strip() or "auto"
    if chunk_episodes == "auto" and inputs.device.type != "cpu":
        chunk_episodes = 0  # the cache-sized chunks are a CPU schedule
    chunk = chunk_episodes_for(b, n, inputs.element_size(), eta.dim() > 0, chunk_episodes, traces=traces)
    d_h_reads, reads_eta = _form_reads(rule_def)
    spec = _KernelSpec(rule_def.elementwise, d_h_reads, input_mode == "clamp", clip, segment_steps, max_amp, kernels,
                       chunk, reads_eta=reads_eta, traces=traces)
    tensors = (inputs, y0, h0, e0, w, alpha, eta, w_mod, b_mod)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    out, *final = _Episode.apply(inputs, same_episode, y0, h0, e0, w, alpha, eta, w_mod, b_mod, spec, save)
    return out, (out[:, -1], *final)


def build_kernels(rules=None) -> tuple[float, bool]:
    """Build the C++ kernels of `rules` (names; default every rule with a fused form) now,
    or load them from the on-disk cache that every process of this machine shares, so
    that no training clock, `--max-minutes` budget or speed metric includes compile time.
    Returns (seconds it took, whether all are available); where they cannot be built the
    torch-op kernels run instead (`cpp_kernels` warns once)."""
    names = [n for n, r in RULES.items() if supports(r, notice=False)] if rules is None else list(rules)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the caller reports the outcome in one line
        ok = all(cpp_kernels(get_rule(name)) is not None for name in names)
    return time.perf_counter() - start, ok
