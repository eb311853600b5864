"""The chunked CPU schedule of the fused path (`plasticity/nn/fused/schedule.py`): chunks of
episodes run through all their steps one after another give what the whole batch
stepped together gives (the `batch` schedule), and the chunk size follows the cache."""

from __future__ import annotations

import itertools

import pytest
import torch

from plasticity.errors import ConfigError
from plasticity.nn.fused import CHUNK_ENV, chunk_episodes_for, plastic_rnn_fused
from plasticity.rules import get_rule
from tests.conftest import assert_close

CASES = [(rule, *modes) for rule, modes in itertools.product(
    ("hebb", "oja", "neuromod", "retroactive"), [("free", "scalar", "add"), ("shared", "per-connection", "clamp")])]


def _run(chunk, rule, alpha_mode, eta_mode, input_mode, dtype=torch.float64, clip=None, eta=0.05, reset=False,
         b=5, t=9, n=7, backend="cpp"):
    """Outputs, final traces and the gradients of a random loss w.r.t. w, alpha, eta, the
    inputs, y0 and the initial traces (and M(t)'s read-out for the neuromodulated rules,
    one M per neuron), for one schedule (`chunk` episodes per chunk; 0 = batch)."""
    g = torch.Generator().manual_seed(0)
    w = (0.3 * torch.randn(n, n, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    alpha = (torch.randn(n, n, generator=g, dtype=torch.float64) if alpha_mode == "free"
             else torch.tensor(0.7, dtype=torch.float64)).to(dtype).requires_grad_()
    eta_t = (eta * (0.5 + torch.rand(n, n, generator=g, dtype=torch.float64)) if eta_mode == "per-connection"
             else torch.tensor(eta, dtype=torch.float64)).to(dtype).requires_grad_()
    x = 2 * torch.randn(b, t, n, generator=g, dtype=torch.float64)
    if input_mode == "clamp":
        x = x * (torch.rand(b, t, n, generator=g, dtype=torch.float64) < 0.5)
    x = x.to(dtype).requires_grad_()
    y0 = (0.5 * torch.randn(b, n, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    traces0 = [(0.2 * torch.randn(b, n, n, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
               for _ in range(2 if rule == "retroactive" else 1)]
    modulator = None
    if rule in ("neuromod", "retroactive"):
        modulator = tuple((s * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
                          for s, shape in ((1.0, (n, n)), (0.3, (n,))))
    resets = None
    if reset:
        resets = torch.zeros(b, t, dtype=torch.bool)
        resets[1, t // 2] = True
    out, (_, hebb, *elig) = plastic_rnn_fused(x, w, alpha, eta_t, rule=get_rule(rule), input_mode=input_mode,
                                              clip=clip, initial_state=(y0, *traces0), reset=resets,
                                              backend=backend, chunk_episodes=chunk, modulator=modulator)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    loss = (out * weights).sum() + hebb.pow(2).sum() + sum(0.5 * e.sum() for e in elig)
    names = ["out", "hebb", *(["elig"] if elig else []), "w", "alpha", "eta", "inputs", "y0",
             *[f"trace{i}_0" for i in range(len(traces0))], *(["w_mod", "b_mod"] if modulator else [])]
    grads = torch.autograd.grad(loss, [w, alpha, eta_t, x, y0, *traces0, *(modulator or ())], allow_unused=True,
                                materialize_grads=True)
    return dict(zip(names, [out, hebb, *elig, *grads], strict=True))


FORWARD = ("out", "hebb", "elig")
"""Per episode: the same values in every schedule to float64 rounding (1e-13 of the
tensor's largest value). Not bit for bit: the step's `y @ w` is `[c, N] @ [N, N]`, which
the BLAS may compute as a GEMV for a chunk of c = 1 and a GEMM for the batch, in another
summation order (seen with torch 2.13.0's CPU BLAS on 2 cores), and the difference grows
through the episode's steps: 2.0e-14 (neuromod, chunks of 1) on a 2-core Intel Xeon VM,
below 1e-14 on the machine the test was first written on. The gradients agree to rounding
too (1e-12; 5.7e-14 seen on that Xeon): dalpha and deta also sum over episodes and steps in
another order (the batch schedule adds step by step over the batch, a chunk over its steps
first)."""


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("rule,alpha_mode,eta_mode,input_mode", CASES, ids=["-".join(c) for c in CASES])
def test_chunks_equal_the_batch_schedule_in_float64(rule, alpha_mode, eta_mode, input_mode, backend):
    """Forward and gradients to float64 rounding (see FORWARD), with a reset in one episode
    (every chunk stores the state before it, as the batch schedule does)."""
    batch = _run(0, rule, alpha_mode, eta_mode, input_mode, backend=backend, reset=True)
    for chunk in (1, 2):  # 5 episodes: chunks of 1, and 2 + 2 + 1
        chunked = _run(chunk, rule, alpha_mode, eta_mode, input_mode, backend=backend, reset=True)
        for name, value in batch.items():
            if name in FORWARD:
                assert_close(chunked[name], value, rtol=1e-13, name=f"chunk {chunk}: {name}")
            else:
                assert_close(chunked[name], value, rtol=1e-12, name=f"chunk {chunk}: grad {name}")


@pytest.mark.parametrize("rule,rtol", [("hebb", 1e-4), ("oja", 1e-4), ("retroactive", 1e-3)])
def test_chunks_equal_the_batch_schedule_in_float32_with_clipping_and_stored_states(rule, rtol):
    """Where the schedules may store different states (a clamp in one chunk, Oja's
    data-dependent error growth), they agree within float32 rounding. retroactive: in this
    case its float32 gradients are 0.4-1.9e-4 from float64 in either schedule (and with the
    torch-op kernels), so the two are compared to 1e-3."""
    kw = dict(rule=rule, alpha_mode="free", eta_mode="per-connection", input_mode="add", clip=0.3, eta=0.4,
              dtype=torch.float32, t=30, n=16)
    batch, chunked = _run(0, **kw), _run(2, **kw)
    for name, value in batch.items():
        assert_close(chunked[name].double(), value.double(), rtol=rtol, name=name)


def test_chunk_size_follows_the_cache_and_can_be_overridden(monkeypatch):
    monkeypatch.delenv(CHUNK_ENV, raising=False)
    mib = 2**20
    # N = 1001 float32: 4 MB per [N, N]; w, alpha, dalpha (12 MB) + 2 x 4 MB per episode.
    # default: sized to half the cache, one episode at N = 1001 in 32 MiB
    assert chunk_episodes_for(32, 1001, 4, False, cache_bytes=32 * mib) == 1
    assert chunk_episodes_for(32, 1001, 4, False, "auto", cache_bytes=64 * mib) == 2
    assert chunk_episodes_for(32, 1001, 4, True, "auto", cache_bytes=64 * mib) == 1
    assert chunk_episodes_for(32, 1001, 4, False, "auto", cache_bytes=8 * mib) == 1  # at least one
    assert chunk_episodes_for(4, 50, 4, False, "auto", cache_bytes=32 * mib) == 4  # all fit: one chunk
    # A VM's sysfs can report the host's whole L3 (260 MiB for 2 cores): counted as 96 MiB.
    assert chunk_episodes_for(32, 1001, 4, False, "auto", cache_bytes=96 * mib) == 4
    assert chunk_episodes_for(32, 1001, 4, False, "auto", cache_bytes=260 * mib) == 4
    # A two-trace rule (retroactive) streams each trace and its gradient: half the episodes.
    assert chunk_episodes_for(32, 500, 4, False, "auto", cache_bytes=32 * mib) == 6
    assert chunk_episodes_for(32, 500, 4, False, "auto", cache_bytes=32 * mib, traces=2) == 3
    assert chunk_episodes_for(32, 1001, 4, False, requested=5) == 5
    assert chunk_episodes_for(32, 1001, 4, False, requested=0) == 32
    monkeypatch.setenv(CHUNK_ENV, "3")
    assert chunk_episodes_for(32, 1001, 4, False) == 3
    monkeypatch.setenv(CHUNK_ENV, "auto")
    assert chunk_episodes_for(32, 1001, 4, False, cache_bytes=64 * mib) == 2
    monkeypatch.setenv(CHUNK_ENV, "0")
    assert chunk_episodes_for(32, 1001, 4, False) == 32  # the batch schedule
    monkeypatch.setenv(CHUNK_ENV, "many")
    with pytest.raises(ConfigError, match=f"{CHUNK_ENV}='many': give a number of episodes per chunk"):
        chunk_episodes_for(32, 1001, 4, False)
    with pytest.raises(ConfigError, match="chunk_episodes must be >= 0 .* or 'auto'"):
        chunk_episodes_for(32, 1001, 4, False, requested=-1)


def test_the_environment_variable_sets_an_episodes_schedule(monkeypatch):
    """PLASTICITY_CHUNK_EPISODES reaches the episode (it was read as text there, and refused)."""
    monkeypatch.setenv(CHUNK_ENV, "2")
    from_env = _run(None, "hebb", "free", "scalar", "add", backend="torch")
    given = _run(2, "hebb", "free", "scalar", "add", backend="torch")
    for name, value in given.items():
        assert_close(from_env[name], value, rtol=0, name=name)
