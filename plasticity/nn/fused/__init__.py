"""The fused path of `PlasticRNN`: a whole sequence as one autograd node, one pass over
Hebb per step, and a backward pass that rebuilds Hebb backward in time (inverting the
rule, or from kept states), so training memory does not grow with steps x N^2.

    out, (y, hebb) = plastic_rnn_fused(inputs, w, alpha, eta, rule=get_rule("hebb"))
    prepare(cfg, device)   # build the C++ kernels a run of cfg will use, before it starts

Nothing here is specific to a rule: every kernel set is built from the rule's elementwise
form (`plasticity.rules.Elementwise`). The maths and the algorithm are in
`plasticity/rules/README.md`, "Running the rules backwards"; the step-by-step references
the tests compare this path with are `plasticity/nn/naive.py` and `PlasticRNN(impl="autograd")`.

    contract.py        what a kernel set does (`Kernels`), the backward modes NONE / INVERT /
                       CKPT / CKPT_ZERO, the backends and dtypes; whether a rule can run fused
    kernels_torch.py   the kernels in torch ops: any device and dtype, the readable reference
    kernels_cpp.py     the C++ kernels (CPU) with their build and loader
    kernels_cpp.cpp    their source, compiled per rule with the rule's functions put before it
    kernels_triton.py  the Triton kernels (CUDA; CPU under TRITON_INTERPRET=1)
    backend.py         which kernel set runs (`get_kernels`, `chosen_backend`), and `prepare`:
                       the one place that decides whether a run builds kernels ahead of time
    schedule.py        which exact states are kept, and the episodes per chunk (cache sizing)
    episode.py         the autograd Function of an episode (`Episode`), chunk by chunk
    api.py             `plastic_rnn_fused`: input checks, then the episode

Within the folder each file imports only files listed above it, never this package
(`kernels_triton` only inside `backend._triton_kernels`: triton is slow to import).
Outside it:

May import: torch, triton, plasticity.errors, plasticity.rules, plasticity.nn.inputs
May import in functions: ninja

triton is optional (without it `kernels_triton.triton_kernels` returns None); `prepare`
reads a config's fields without importing `plasticity.config`.
"""

from plasticity.nn.fused.api import plastic_rnn_fused
from plasticity.nn.fused.backend import Prepared, chosen_backend, get_kernels, prepare
from plasticity.nn.fused.contract import BACKENDS, CKPT, INVERT, NONE, Kernels, fused_rules, supports
from plasticity.nn.fused.kernels_cpp import build_kernels, cpp_kernels, cpp_source, module_name
from plasticity.nn.fused.kernels_torch import TorchKernels
from plasticity.nn.fused.schedule import CHUNK_ENV, chunk_episodes_for, recompute_segment

__all__ = ["BACKENDS", "CHUNK_ENV", "CKPT", "INVERT", "NONE", "Kernels", "Prepared", "TorchKernels", "build_kernels",
           "chosen_backend", "chunk_episodes_for", "cpp_kernels", "cpp_source", "fused_rules", "get_kernels",
           "module_name", "plastic_rnn_fused", "prepare", "recompute_segment", "supports"]
