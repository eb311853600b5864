"""Neuromodulated plasticity (Backpropamine): the batched rules and the modulated
recurrent layer vs their naive references, on values and gradients, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch

from plasticity.errors import ConfigError, ShapeError
from plasticity.nn import PlasticRNN
from plasticity.nn.naive import modulated_rnn_naive
from plasticity.nn.plastic import eta_from_logit
from plasticity.rules import get_rule, rule_names
from plasticity.rules.naive import NAIVE_MODULATED_STEPS
from tests.conftest import assert_close

MODULATED = rule_names(modulated=True)
"""The registered neuromodulated rules (the others: test_rules.py, test_nn.py)."""
RULE_CASES = list(itertools.product(MODULATED, ("scalar", "per-connection"),
                                    ("network", "neuron"), (None, 0.3)))


def _rule_inputs(rule, eta_mode, mod_mode, b=3, n_in=4, n_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_traces = len(get_rule(rule).traces)
    traces = tuple((0.5 * torch.randn(b, n_in, n_out, generator=g, dtype=torch.float64)).requires_grad_()
                   for _ in range(n_traces))
    pre = torch.randn(b, n_in, generator=g, dtype=torch.float64).tanh().requires_grad_()
    post = torch.randn(b, n_out, generator=g, dtype=torch.float64).tanh().requires_grad_()
    eta_shape = () if eta_mode == "scalar" else (n_in, n_out)
    eta = (0.05 + 0.2 * torch.rand(eta_shape, generator=g, dtype=torch.float64)).requires_grad_()
    mod_shape = (b,) if mod_mode == "network" else (b, n_out)
    mod = torch.randn(mod_shape, generator=g, dtype=torch.float64).tanh().requires_grad_()
    return traces, pre, post, eta, mod


@pytest.mark.parametrize("rule,eta_mode,mod_mode,clip", RULE_CASES, ids=["-".join(map(str, c)) for c in RULE_CASES])
def test_batched_modulated_rule_matches_naive(rule, eta_mode, mod_mode, clip):
    traces, pre, post, eta, mod = _rule_inputs(rule, eta_mode, mod_mode)
    fast = get_rule(rule).update(traces, pre, post, eta=eta, clip=clip, mod=mod)
    per_episode = [NAIVE_MODULATED_STEPS[rule](tuple(tr[b] for tr in traces), pre[b], post[b], eta, mod[b], clip)
                   for b in range(pre.shape[0])]
    naive = tuple(torch.stack(parts) for parts in zip(*per_episode, strict=True))
    weights = [torch.randn_like(f) for f in fast]
    inputs = (*traces, pre, post, eta, mod)
    grads_fast = torch.autograd.grad(sum((f * w).sum() for f, w in zip(fast, weights, strict=True)), inputs,
                                     allow_unused=True, materialize_grads=True)
    grads_naive = torch.autograd.grad(sum((f * w).sum() for f, w in zip(naive, weights, strict=True)), inputs,
                                      allow_unused=True, materialize_grads=True)
    for name, a, c in zip(get_rule(rule).traces, fast, naive, strict=True):
        assert_close(a, c, name=name)
    names = [*get_rule(rule).traces, "pre", "post", "eta", "mod"]
    for name, a, c in zip(names, grads_fast, grads_naive, strict=True):
        assert_close(a, c, name=f"grad {name}")


@pytest.mark.parametrize("rule", MODULATED)
def test_modulated_rule_gradcheck(rule):
    traces, pre, post, eta, mod = _rule_inputs(rule, "per-connection", "neuron", b=2, n_in=3, n_out=2)
    n = len(traces)

    def fn(*args):
        return get_rule(rule).update(args[:n], *args[n:n + 2], eta=args[n + 2], mod=args[n + 3], clip=None)

    assert torch.autograd.gradcheck(fn, (*traces, pre, post, eta, mod))


def test_neuromod_by_hand():
    # One connection: Hebb 0.5 + M 0.5 * pre 2 * post 3 = 3.5, clipped to 1 by default.
    hebb = torch.full((1, 1, 1), 0.5)
    pre, post, mod = torch.tensor([[2.0]]), torch.tensor([[3.0]]), torch.tensor([0.5])
    assert get_rule("neuromod").update((hebb,), pre, post, eta=None, mod=mod)[0].item() == 1.0
    assert get_rule("neuromod").update((hebb,), pre, post, eta=None, mod=mod, clip=None)[0].item() == 3.5
    # A negative M is anti-Hebbian.
    assert get_rule("neuromod").update((hebb,), pre, post, eta=None, mod=-mod, clip=None)[0].item() == -2.5


def test_retroactive_writes_the_old_eligibility_then_decays_it():
    hebb, elig = torch.zeros(1, 1, 1), torch.full((1, 1, 1), 0.4)
    pre, post = torch.tensor([[1.0]]), torch.tensor([[1.0]])
    h, e = get_rule("retroactive").update((hebb, elig), pre, post, eta=torch.tensor(0.25), mod=torch.tensor([0.5]))
    assert h.item() == pytest.approx(0.5 * 0.4)                # M(t) * E(t)
    assert e.item() == pytest.approx(0.75 * 0.4 + 0.25 * 1.0)  # (1 - eta) E + eta pre post
    # With M = 0 nothing reaches Hebb, whatever the coincidences.
    h, _ = get_rule("retroactive").update((hebb, elig), pre, post, eta=torch.tensor(0.25), mod=torch.zeros(1))
    assert h.item() == 0.0


def test_modulated_rules_need_mod_of_the_right_shape():
    traces, pre, post, eta, _ = _rule_inputs("neuromod", "scalar", "network")
    with pytest.raises(ShapeError, match=r"rule 'neuromod' needs a modulatory signal"):
        get_rule("neuromod").update(traces, pre, post, eta=eta)
    with pytest.raises(ShapeError, match=r"mod must be \[B\], \[B, 1\] or \[B, N_out\] = \[3, 5\], got \(3, 4\)"):
        get_rule("neuromod").update(traces, pre, post, eta=eta, mod=torch.zeros(3, 4))


# ---- the recurrent layer emitting M(t) ----

NET_CASES = list(itertools.product(MODULATED, ("network", "neuron"), ("free", "shared"),
                                   ("add", "clamp"), (None, 0.5)))


def _net(rule, modulation, alpha_mode="free", input_mode="add", clip=1.0, n=6, seed=0, **kw):
    torch.manual_seed(seed)
    net = PlasticRNN(n, rule=rule, modulation=modulation, alpha_mode=alpha_mode, input_mode=input_mode,
                     clip=clip, eta=0.3, init_std=0.3, **kw).double()
    with torch.no_grad():
        net.plastic.alpha.mul_(3)
        net.modulator.weight.mul_(3)  # make M(t) vary in sign and size
    return net


def _params(net):
    return [net.plastic.w, net.plastic.alpha, net.plastic.eta_logit, net.modulator.weight, net.modulator.bias]


@pytest.mark.parametrize("rule,modulation,alpha_mode,input_mode,clip", NET_CASES,
                         ids=["-".join(map(str, c)) for c in NET_CASES])
def test_modulated_rnn_matches_naive_per_episode(rule, modulation, alpha_mode, input_mode, clip):
    """B batched episodes == B naive runs: outputs, final traces and gradients of w, alpha,
    eta, the modulator's read-out and the initial state (both rules on the fused path, with
    the C++ kernels)."""
    net = _net(rule, modulation, alpha_mode, input_mode, clip)
    assert net.fused
    compare_modulated_with_naive(net, input_mode, clip)


def compare_modulated_with_naive(net, input_mode, clip, b=3, t=7, rtol=1e-10):
    """`net` (a modulated PlasticRNN, any dtype and path) over b episodes of t steps from a
    random state vs the float64 naive loop per episode: outputs, final state, gradients."""
    n, dtype = net.n, net.plastic.w.dtype
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, t, n, generator=g, dtype=torch.float64)
    if input_mode == "clamp":
        x = x * (torch.rand(b, t, n, generator=g, dtype=torch.float64) < 0.5)
    y0 = (0.5 * torch.randn(b, n, generator=g, dtype=torch.float64)).requires_grad_()
    tr0 = tuple((0.2 * torch.randn(b, n, n, generator=g, dtype=torch.float64)).requires_grad_()
                for _ in net.plastic.rule.traces)
    y0_dev, tr0_dev = (y0.to(net.plastic.w.device, dtype), tuple(tr.to(net.plastic.w.device, dtype) for tr in tr0))
    out, (y_final, traces) = net(x.to(net.plastic.w.device, dtype), state=(y0_dev, tr0_dev))
    out, y_final, traces = out.double().cpu(), y_final.double().cpu(), [tr.double().cpu() for tr in traces]
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    fast = torch.autograd.grad((out * weights).sum() + sum(tr.pow(2).sum() for tr in traces),
                               [*_params(net), y0, *tr0], allow_unused=True, materialize_grads=True)
    ref = {k: v.detach().double().cpu().requires_grad_() for k, v in net.named_parameters()}
    p = net.plastic
    naive_loss, outs = 0, []
    for i in range(b):
        o, (y_i, tr_i) = modulated_rnn_naive(ref["plastic.w"], ref["plastic.alpha"],
                                             eta_from_logit(ref["plastic.eta_logit"]), p.rule.name, x[i],
                                             ref["modulator.weight"].T, ref["modulator.bias"],
                                             input_mode=input_mode, clip=clip,
                                             initial_state=(y0[i], tuple(tr[i] for tr in tr0)))
        outs.append(o)
        naive_loss = naive_loss + (o * weights[i]).sum() + sum(tr.pow(2).sum() for tr in tr_i)
        assert_close(y_final[i], y_i, rtol, name="final y")
        for name, a, c in zip(p.rule.traces, traces, tr_i, strict=True):
            assert_close(a[i], c, rtol, name=f"final {name}")
    assert_close(out, torch.stack(outs), rtol, name="outputs")
    naive = torch.autograd.grad(naive_loss, [ref[k] for k in ("plastic.w", "plastic.alpha", "plastic.eta_logit",
                                                              "modulator.weight", "modulator.bias")] + [y0, *tr0],
                                allow_unused=True, materialize_grads=True)
    names = ["w", "alpha", "eta", "w_mod", "b_mod", "y0", *p.rule.traces]
    for name, a, c in zip(names, fast, naive, strict=True):
        assert_close(a.double().cpu(), c, rtol, name=f"grad {name}")


@pytest.mark.parametrize("rule", MODULATED)
def test_modulated_rnn_segment_recompute_gives_identical_gradients(rule):
    plain = _net(rule, "neuron")
    chunked = _net(rule, "neuron", segment_steps=3)
    x = torch.randn(2, 8, plain.n, dtype=torch.float64)
    out_p, _ = plain(x)
    out_c, _ = chunked(x)
    assert_close(out_c, out_p, name="outputs")
    w = torch.randn_like(out_p)
    grads_p = torch.autograd.grad((out_p * w).sum(), _params(plain), allow_unused=True, materialize_grads=True)
    grads_c = torch.autograd.grad((out_c * w).sum(), _params(chunked), allow_unused=True, materialize_grads=True)
    for name, a, c in zip(["w", "alpha", "eta", "w_mod", "b_mod"], grads_c, grads_p, strict=True):
        assert_close(a, c, name=f"grad {name}")


def test_modulated_rnn_packed_episodes_with_reset_equal_separate_runs():
    net = _net("retroactive", "network")
    first, second = torch.randn(2, 5, net.n, dtype=torch.float64), torch.randn(2, 4, net.n, dtype=torch.float64)
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[:, 5] = True
    packed, state = net(torch.cat([first, second], 1), reset=reset)
    _, separate = net(second)
    assert_close(packed, torch.cat([net(first)[0], net(second)[0]], 1), name="outputs")
    for a, c in zip(state.traces, separate.traces, strict=True):
        assert_close(a, c, name="traces")


def test_modulation_changes_the_output_and_the_readout_learns():
    net = _net("neuromod", "network")
    x = torch.randn(1, 6, net.n, dtype=torch.float64)
    with torch.no_grad():
        net.modulator.bias.fill_(-20.0)  # M = -1 at every step
        anti, _ = net(x)
        net.modulator.bias.fill_(20.0)   # M = +1
        hebb, _ = net(x)
    assert torch.equal(anti[:, :2], hebb[:, :2])  # Hebb is still zero at step 0 and first used at step 1
    assert not torch.allclose(anti[:, -1], hebb[:, -1])
    fresh = _net("neuromod", "network")
    out, _ = fresh(x)
    out[:, -1].sum().backward()
    assert fresh.modulator.weight.grad.abs().sum() > 0  # the read-out is trained through the Hebbian update


@pytest.mark.parametrize("kwargs,message", [
    (dict(rule="neuromod"), r"rule 'neuromod' with modulation 'none': neuromodulated rules"),
    (dict(rule="hebb", modulation="network"), r"rule 'hebb' with modulation 'network'"),
    (dict(rule="retroactive", modulation="synapse"), r"unknown modulation 'synapse': choose one of none, network"),
], ids=["modulated-rule-without-modulation", "modulation-without-modulated-rule", "unknown-modulation"])
def test_bad_modulation_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PlasticRNN(4, **kwargs)
