"""Batched plastic layers vs the naive one-episode loops: outputs and gradients
(w, alpha, eta, and the initial state), episode boundaries, recomputation, shapes."""

from __future__ import annotations

import itertools

import pytest
import torch

from plasticity.errors import ConfigError, ShapeError
from plasticity.nn import LSTMNet, PlasticLinear, PlasticRNN, RecurrentNet
from plasticity.nn.naive import plastic_linear_naive, plastic_rnn_naive
from plasticity.rules import rule_names
from tests.conftest import assert_close

PLAIN = rule_names(modulated=False)
"""The registered rules without a modulatory signal (the neuromodulated ones: test_neuromod.py)."""
RNN_CASES = list(itertools.product(PLAIN, ("free", "shared"), ("scalar", "per-connection"),
                                   ("add", "clamp"), (None, 0.5)))
IMPLS = {"autograd": dict(impl="autograd"), "fused-cpp": dict(impl="fused", fused_backend="cpp"),
         "fused-torch": dict(impl="fused", fused_backend="torch")}
"""Every implementation of `PlasticRNN`: step-by-step autograd, and the fused path with
its C++ kernels and with its torch-op kernels."""


def _rnn(rule, alpha_mode, eta_mode, input_mode, clip, n=6, seed=0, **kw):
    torch.manual_seed(seed)
    net = PlasticRNN(n, rule=rule, alpha_mode=alpha_mode, eta_mode=eta_mode, input_mode=input_mode,
                     clip=clip, eta=0.1, init_std=0.3, **kw).double()
    with torch.no_grad():
        net.plastic.alpha.mul_(3)  # make plasticity matter
        if eta_mode == "per-connection":
            net.plastic.eta = torch.empty(net.plastic.eta.shape).uniform_(0.05, 0.3)
    return net


def _inputs(b, t, n, input_mode, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, n, generator=g, dtype=torch.float64)
    if input_mode == "clamp":
        x = x * (torch.rand(b, t, n, generator=g, dtype=torch.float64) < 0.5)  # half the neurons free
    return x


def _grads(loss, net, extra=()):
    params = [net.plastic.w, net.plastic.alpha, net.plastic.eta_logit, *extra]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule,alpha_mode,eta_mode,input_mode,clip", RNN_CASES,
                         ids=["-".join(map(str, c)) for c in RNN_CASES])
def test_plastic_rnn_matches_naive_per_episode(rule, alpha_mode, eta_mode, input_mode, clip, impl):
    """B batched episodes == B separate naive runs, on outputs and on all gradients
    (clip 0.5 clips: the initial Hebb and the updates reach past it)."""
    net = _rnn(rule, alpha_mode, eta_mode, input_mode, clip, **IMPLS[impl])
    b, t, n = 3, 7, net.n
    x = _inputs(b, t, n, input_mode)
    y0 = (0.5 * torch.randn(b, n, dtype=torch.float64)).requires_grad_()
    h0 = (0.2 * torch.randn(b, n, n, dtype=torch.float64)).requires_grad_()
    out, (y_final, (h_final,)) = net(x, state=(y0, (h0,)))
    weights = torch.randn_like(out)
    fast_loss = (out * weights).sum() + h_final.pow(2).sum()
    fast = _grads(fast_loss, net, (y0, h0))

    p = net.plastic
    naive_loss, outs = 0, []
    for i in range(b):
        o, (y_i, h_i) = plastic_rnn_naive(p.w, p.alpha, p.eta, rule, x[i], input_mode=input_mode, clip=clip,
                                          initial_state=(y0[i], h0[i]))
        outs.append(o)
        naive_loss = naive_loss + (o * weights[i]).sum() + h_i.pow(2).sum()
        assert_close(y_final[i], y_i, name="final y")
        assert_close(h_final[i], h_i, name="final hebb")
    assert_close(out, torch.stack(outs), name="outputs")
    naive = _grads(naive_loss, net, (y0, h0))
    for name, a, c in zip(("w", "alpha", "eta", "y0", "hebb0"), fast, naive, strict=True):
        assert_close(a, c, name=f"grad {name}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule", PLAIN)
def test_plastic_rnn_gradcheck(rule, impl):
    net = _rnn(rule, "free", "scalar", "add", None, n=3, **IMPLS[impl])
    x = _inputs(2, 4, 3, "add")
    # gradcheck wants a pure function of its inputs: use torch.func.functional_call.
    names, params = zip(*net.named_parameters(), strict=True)
    f = lambda *ps: torch.func.functional_call(net, dict(zip(names, ps, strict=True)), (x,))[0]  # noqa: E731
    inputs = tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule", PLAIN)
def test_packed_episodes_with_reset_equal_separate_runs(rule, impl):
    """Two episodes run back to back with a reset == each run from a zero state."""
    net = _rnn(rule, "free", "scalar", "add", None, **IMPLS[impl])
    first, second = _inputs(2, 5, net.n, "add", seed=2), _inputs(2, 4, net.n, "add", seed=3)
    packed = torch.cat([first, second], 1)
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[:, 5] = True
    out_packed, state_packed = net(packed, reset=reset)
    out_a, _ = net(first)
    out_b, state_b = net(second)
    assert_close(out_packed, torch.cat([out_a, out_b], 1), name="outputs")
    assert_close(state_packed.traces[0], state_b.traces[0], name="hebb")
    w = torch.randn_like(out_packed)
    g_packed = _grads((out_packed * w).sum(), net)
    g_sep = _grads((out_a * w[:, :5]).sum() + (out_b * w[:, 5:]).sum(), net)
    for name, a, c in zip(("w", "alpha", "eta"), g_packed, g_sep, strict=True):
        assert_close(a, c, name=f"grad {name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_reset_per_episode_in_batch(impl):
    """Resets at different steps for different batch elements."""
    net = _rnn("hebb", "free", "scalar", "add", None, **IMPLS[impl])
    x = _inputs(2, 6, net.n, "add")
    reset = torch.zeros(2, 6, dtype=torch.bool)
    reset[0, 2], reset[1, 4] = True, True
    out, _ = net(x, reset=reset)
    assert_close(out[0, 2:], net(x[:1, 2:])[0][0], name="episode 0 after reset")
    assert_close(out[1, 4:], net(x[1:, 4:])[0][0], name="episode 1 after reset")
    assert_close(out[1, :4], net(x[1:, :4])[0][0], name="episode 1 before reset")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule", PLAIN)
def test_segment_recompute_gives_identical_gradients(rule, impl):
    """`segment_steps`: plain recomputes segments, fused stores exact Hebb states."""
    plain = _rnn(rule, "free", "per-connection", "add", 0.5, impl="autograd")
    chunked = _rnn(rule, "free", "per-connection", "add", 0.5, segment_steps=3, **IMPLS[impl])
    x = _inputs(2, 8, plain.n, "add")
    out_p, _ = plain(x)
    out_c, _ = chunked(x)
    assert_close(out_c, out_p, name="outputs")
    w = torch.randn_like(out_p)
    grads_c, grads_p = _grads((out_c * w).sum(), chunked), _grads((out_p * w).sum(), plain)
    for name, a, c in zip(("w", "alpha", "eta"), grads_c, grads_p, strict=True):
        assert_close(a, c, name=f"grad {name}")


LINEAR_CASES = list(itertools.product(PLAIN, ("free", "shared"), (None, "softmax")))


@pytest.mark.parametrize("rule,alpha_mode,act", LINEAR_CASES, ids=["-".join(map(str, c)) for c in LINEAR_CASES])
def test_plastic_linear_matches_naive(rule, alpha_mode, act):
    torch.manual_seed(0)
    activation = None if act is None else (lambda a: torch.softmax(a, -1))
    layer = PlasticLinear(5, 4, rule=rule, alpha_mode=alpha_mode, eta=0.2, init_std=0.3,
                          activation=activation).double()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    drive = torch.randn(3, 6, 4, dtype=torch.float64)
    out, (hebb,) = layer(x, drive=drive)
    w = torch.randn_like(out)
    p = layer.plastic
    params = (p.w, p.alpha, p.eta_logit, layer.bias)
    fast = torch.autograd.grad((out * w).sum() + hebb.sum(), params)
    naive_loss, outs = 0, []
    for i in range(3):
        o, h = plastic_linear_naive(p.w, p.alpha, p.eta, layer.bias, rule, x[i], drive=drive[i],
                                    activation=activation)
        outs.append(o)
        naive_loss = naive_loss + (o * w[i]).sum() + h.sum()
    assert_close(out, torch.stack(outs), name="outputs")
    for name, a, c in zip(("w", "alpha", "eta", "bias"), fast, torch.autograd.grad(naive_loss, params), strict=True):
        assert_close(a, c, name=f"grad {name}")


@pytest.mark.parametrize("make", [lambda: RecurrentNet(6), lambda: LSTMNet(6, 8)], ids=["rnn", "lstm"])
def test_baselines_reset_equals_separate_runs(make):
    torch.manual_seed(0)
    net = make().double()
    a, b = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    reset = torch.zeros(2, 7, dtype=torch.bool)
    reset[:, 4] = True
    packed, _ = net(torch.cat([a, b], 1), reset=reset)
    assert_close(packed, torch.cat([net(a)[0], net(b)[0]], 1), name="outputs")


def test_shape_errors_are_specific():
    net = PlasticRNN(4)
    with pytest.raises(ShapeError, match=r"inputs must be \[B, T, 4\], got \(3, 4\)"):
        net(torch.zeros(3, 4))
    with pytest.raises(ShapeError, match=r"inputs must be \[B, T, 4\], got \(2, 3, 5\)"):
        net(torch.zeros(2, 3, 5))
    with pytest.raises(ShapeError, match=r"hebb trace has shape \(2, 4, 3\), expected \(2, 4, 4\)"):
        net(torch.zeros(2, 3, 4), state=(torch.zeros(2, 4), (torch.zeros(2, 4, 3),)))
    with pytest.raises(ShapeError, match=r"reset must be \[B, T\]"):
        net(torch.zeros(2, 3, 4), reset=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"drive must be"):
        PlasticLinear(3, 2)(torch.zeros(1, 2, 3), drive=torch.zeros(1, 2, 3))


@pytest.mark.parametrize("kwargs,message", [
    (dict(eta=-0.1), r"eta must be in \(0, 1\], got -0.1"),
    (dict(eta=1.5), r"eta must be in \(0, 1\]"),
    (dict(rule="bcm"), r"unknown plasticity rule 'bcm'"),
    (dict(alpha_mode="tied"), r"unknown alpha mode 'tied': choose one of free, shared"),
    (dict(clip=0), r"clip must be > 0"),
], ids=["negative-eta", "eta-above-1", "unknown-rule", "alpha-mode", "clip"])
def test_bad_layer_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PlasticRNN(4, **kwargs)
    with pytest.raises(ConfigError):
        PlasticRNN(0)


def test_yoked_alpha_is_one_parameter_and_plasticity_changes_the_output():
    net = PlasticRNN(5, alpha_mode="shared", eta=0.5)
    assert net.plastic.alpha.shape == ()
    x = torch.randn(1, 6, 5)
    with torch.no_grad():
        net.plastic.alpha.fill_(0.0)
        still, _ = net(x)
        net.plastic.alpha.fill_(2.0)
        plastic, _ = net(x)
    # Step 0 sees Hebb = 0, so only later steps can differ.
    assert torch.equal(still[:, 0], plastic[:, 0])
    assert not torch.allclose(still[:, -1], plastic[:, -1])
