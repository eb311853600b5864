"""Naive reference loops for the plastic layers: one episode, one step at a time.

Written like the 2018 reference code (no batch dimension, matrices and `torch.outer`)
so that the batched layers in `plastic.py` can be compared with them on outputs and
gradients. Use small sizes in tests; at the paper's sizes this is the "batch 1, plain
autograd" baseline of the benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plasticity.nn.inputs import drive_neurons
from plasticity.rules.naive import NAIVE_MODULATED_STEPS, NAIVE_STEPS


def plastic_rnn_naive(w: Tensor, alpha: Tensor, eta: Tensor, rule: str, inputs: Tensor, *,
                      input_mode: str = "add", clip: float | None = None,
                      initial_state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One episode of the fully recurrent plastic network.

    w, alpha `[N, N]` (alpha may be a scalar), inputs `[T, N]`, state `(y [N], hebb [N, N])`.
    Returns (activities `[T, N]`, final `(y, hebb)`).
    """
    step = NAIVE_STEPS[rule]
    n = w.shape[0]
    if initial_state is None:
        y, hebb = torch.zeros(n, dtype=w.dtype), torch.zeros(n, n, dtype=w.dtype)
    else:
        y, hebb = initial_state
    ys = []
    for t in range(inputs.shape[0]):
        x = inputs[t]
        recurrent = y @ (w + alpha * hebb)
        new_y = drive_neurons(recurrent, x, input_mode)
        hebb = step(hebb, y, new_y, eta, clip)
        y = new_y
        ys.append(y)
    return torch.stack(ys), (y, hebb)


def plastic_linear_naive(w: Tensor, alpha: Tensor, eta: Tensor, bias: Tensor | None, rule: str,
                         x: Tensor, *, drive: Tensor | None = None, activation=None,
                         clip: float | None = None, hebb: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One episode of the feed-forward plastic layer: x `[T, N_in]` -> (y `[T, N_out]`, hebb)."""
    step = NAIVE_STEPS[rule]
    if hebb is None:
        hebb = torch.zeros_like(w)
    ys = []
    for t in range(x.shape[0]):
        a = x[t] @ (w + alpha * hebb)
        if bias is not None:
            a = a + bias
        if drive is not None:
            a = a + drive[t]
        y = a if activation is None else activation(a)
        hebb = step(hebb, x[t], y, eta, clip)
        ys.append(y)
    return torch.stack(ys), hebb


def modulated_rnn_naive(w: Tensor, alpha: Tensor, eta: Tensor, rule: str, inputs: Tensor, w_mod: Tensor,
                        b_mod: Tensor, *, input_mode: str = "add", clip: float | None = 1.0,
                        initial_state: tuple[Tensor, tuple[Tensor, ...]] | None = None):
    """One episode of the neuromodulated recurrent network (Backpropamine).

    As `plastic_rnn_naive`, plus the modulatory read-out `M(t) = tanh(y(t) @ w_mod + b_mod)`,
    w_mod `[N, 1]` (one M for the network) or `[N, N]` (one per neuron). State is
    `(y [N], traces)` with traces `(hebb,)` or `(hebb, eligibility)`, each `[N, N]`.
    Returns (activities `[T, N]`, final `(y, traces)`).
    """
    step = NAIVE_MODULATED_STEPS[rule]
    n = w.shape[0]
    if initial_state is None:
        n_traces = 2 if rule == "retroactive" else 1
        y, traces = torch.zeros(n, dtype=w.dtype), tuple(torch.zeros(n, n, dtype=w.dtype) for _ in range(n_traces))
    else:
        y, traces = initial_state
    ys = []
    for t in range(inputs.shape[0]):
        x = inputs[t]
        recurrent = y @ (w + alpha * traces[0])
        new_y = drive_neurons(recurrent, x, input_mode)
        m = torch.tanh(new_y @ w_mod + b_mod)
        traces = step(traces, y, new_y, eta, m.squeeze(0) if m.numel() == 1 else m, clip)
        y = new_y
        ys.append(y)
    return torch.stack(ys), (y, traces)
