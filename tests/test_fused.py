"""The fused path of `PlasticRNN` (`plasticity/nn/fused/`) beyond the value-and-gradient
comparisons of test_nn.py: what it stores for the backward pass, its accuracy in
float32 over a reference-length episode, where it falls back, and its errors."""

from __future__ import annotations

import pytest
import torch

from plasticity.errors import ConfigError, ShapeError
from plasticity.nn import PlasticRNN
from plasticity.nn.fused import plastic_rnn_fused
from plasticity.rules import HEBB, get_rule
from tests.conftest import assert_close


def _net(rule="hebb", n=8, eta=0.05, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return PlasticRNN(n, rule=rule, eta=eta, init_std=0.3, **kw).to(dtype)


def _x(b, t, n, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(b, t, n, generator=g, dtype=torch.float64).to(dtype)


def _stored(out: torch.Tensor) -> int:
    """Exact Hebb states the fused node keeps for its backward pass (its `ckpts`, one dict
    per chunk of episodes; the initial state is None when the episode starts from zero Hebb)."""
    return sum(h is not None for chunk in out.grad_fn.ckpts for h in chunk.values())


def _grads(net, out):
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out)
    p = net.plastic
    return torch.autograd.grad((out * weights).sum(), [t for t in (p.w, p.alpha, p.eta_logit) if t.requires_grad])


@pytest.mark.parametrize("rule", ["hebb", "oja"])
@pytest.mark.parametrize("steps", [20, 200])
def test_backward_stores_no_hebb_state_per_step(rule, steps):
    """A small eta is inverted all the way back: nothing of size N^2 is kept per step,
    whatever the episode length, and the gradients are still those of plain autograd."""
    fused, plain = _net(rule), _net(rule, impl="autograd")
    x = _x(2, steps, fused.n)
    out, _ = fused(x)
    assert _stored(out) == 0
    for a, b in zip(_grads(fused, out), _grads(plain, plain(x)[0]), strict=True):
        assert_close(a, b, rtol=1e-9)


@pytest.mark.parametrize("rule", ["hebb", "oja"])
def test_eta_one_cannot_be_inverted_and_every_state_is_stored(rule):
    """eta = 1 forgets Hebb entirely at each step (decaying Hebb) or makes Oja's
    inverse blow up: the fused path stores the states instead and stays exact."""
    # A learned eta is a sigmoid and never reaches 1: eta = 1 is a fixed eta.
    fused, plain = _net(rule, eta=1.0, learn_eta=False), _net(rule, eta=1.0, learn_eta=False, impl="autograd")
    x = _x(2, 12, fused.n)
    out, _ = fused(x)
    if rule == "hebb":
        assert _stored(out) == 12 - 1  # every state a later step reads, but the first (zero)
    else:
        assert _stored(out) >= 1
    for a, b in zip(_grads(fused, out), _grads(plain, plain(x)[0]), strict=True):
        assert_close(a, b, rtol=1e-9)


def test_segment_steps_bounds_the_inversion_run():
    net = _net(segment_steps=5)
    out, _ = net(_x(1, 31, net.n))
    assert _stored(out) == len(range(5, 31, 5))


def _clipped(out: torch.Tensor) -> int:
    """Steps whose update clipped (recomputed by the backward pass, not stored)."""
    return sum(len(chunk) for chunk in out.grad_fn.clipped)


@pytest.mark.parametrize("rule,steps", [("hebb", 10), ("neuromod", 100)])
def test_clipped_steps_are_recomputed_not_stored_or_inverted(rule, steps):
    """A clamp loses information, so a clipped step cannot be inverted; rather than keeping
    the state of every clipped step (with Hebb saturated, neuromod clips at nearly every
    step), the fused path keeps one every ceil(sqrt(T)) steps and the backward pass
    recomputes the clipped ones from it: memory O(sqrt(T)) states, gradients still exact."""
    from plasticity.nn.fused import recompute_segment

    # neuromod does not read eta: fixed, so that both paths differentiate the same tensors.
    kw = dict(modulation="network", learn_eta=False) if rule == "neuromod" else {}
    fused, plain = (_net(rule, eta=0.5, clip=0.05, impl=impl, **kw) for impl in ("fused", "autograd"))
    x = _x(2, steps, fused.n)
    out, _ = fused(x)
    k = recompute_segment(steps)
    assert _clipped(out) > steps // 2 and _stored(out) == len(range(k, steps, k))
    expected, _ = plain(x)
    assert_close(out, expected, rtol=1e-12)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads = [torch.autograd.grad((o * weights).sum(), [p for p in net.parameters() if p.requires_grad],
                                 allow_unused=True, materialize_grads=True)
             for net, o in ((fused, out), (plain, expected))]
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, rtol=1e-9)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_two_trace_states_are_recomputed_in_segments(clip):
    """retroactive carries Hebb and E and is never inverted: one state is kept every
    ceil(sqrt(T)) steps, clipped or not, and the backward pass recomputes the others from
    it; outputs and gradients (eta, the read-out of M(t) included) equal autograd's."""
    from plasticity.nn.fused import recompute_segment

    steps = 50
    fused, plain = (_net("retroactive", eta=0.3, clip=clip, impl=impl, modulation="neuron")
                    for impl in ("fused", "autograd"))
    x = _x(2, steps, fused.n)
    out, _ = fused(x)
    k = recompute_segment(steps)
    stored = len(range(k, steps, k))
    assert _stored(out) == stored and _clipped(out) == steps - 1 - stored
    expected, _ = plain(x)
    assert_close(out, expected, rtol=1e-12)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads = [torch.autograd.grad((o * weights).sum(), list(net.parameters())) for net, o in ((fused, out),
                                                                                          (plain, expected))]
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, rtol=1e-9)


@pytest.mark.parametrize("rule", ["hebb", "oja"])
@pytest.mark.parametrize("eta", [0.01, 0.3])
def test_float32_reference_length_episode_is_as_accurate_as_plain_autograd(rule, eta):
    """106 steps (the reference pattern episode) in float32: the rounding error that the
    inversion adds stays of the order of plain autograd's own float32 error. (Near
    eta = 1 the dynamics amplify any rounding difference, the forward's summation order
    included: there both paths are off by 1e-4..1e-3 and the test would only measure
    which rounding the chaos picked.)"""
    ref = _net(rule, n=48, eta=eta, impl="autograd")
    x = torch.sign(_x(2, 106, 48)) * 3
    exact = _grads(ref, ref(x)[0])
    errors = {}
    for impl in ("autograd", "fused"):
        net = _net(rule, n=48, eta=eta, impl=impl, dtype=torch.float32)
        net.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
        got = _grads(net, net(x.float())[0])
        errors[impl] = max(float((g.double() - e).abs().max() / e.abs().max()) for g, e in zip(got, exact,
                                                                                              strict=True))
    assert errors["fused"] < 1e-4
    assert errors["fused"] < 10 * errors["autograd"] + 1e-6, errors


def test_no_grad_forward_keeps_nothing():
    net = _net()
    with torch.no_grad():
        out, state = net(_x(2, 6, net.n))
    assert out.grad_fn is None and state.traces[0].shape == (2, net.n, net.n)


def test_rules_without_an_elementwise_form_fall_back_to_plain_autograd(monkeypatch):
    from plasticity.rules import RULES, Rule, hebb_update

    monkeypatch.setitem(RULES, "formless", Rule("formless", hebb_update))
    net = PlasticRNN(6, rule="formless")
    assert net.impl == "fused" and not net.fused
    out, _ = net(torch.randn(2, 4, 6))
    assert "Episode" not in type(out.grad_fn).__name__
    w = torch.zeros(4, 4)
    with pytest.raises(ConfigError, match="the fused path has no elementwise form for rule 'formless': use one of "
                                          "hebb, neuromod, oja, retroactive or the autograd path"):
        plastic_rnn_fused(torch.zeros(1, 3, 4), w, w, torch.tensor(0.1), rule=RULES["formless"])


def test_two_trace_rule_on_the_fused_path_carries_both_traces():
    """retroactive (Hebb and the eligibility trace E) runs fused; its state is both traces,
    and a state with too many traces is refused in one line."""
    net = PlasticRNN(6, rule="retroactive", modulation="network")
    assert net.fused
    out, state = net(torch.randn(2, 4, 6))
    assert "Episode" in type(out.grad_fn).__name__
    assert [tuple(t.shape) for t in state.traces] == [(2, 6, 6), (2, 6, 6)]
    w = torch.zeros(4, 4)
    mod = (torch.zeros(4, 1), torch.zeros(1))
    with pytest.raises(ShapeError, match=r"initial_state must be \(y, hebb, eligibility\) for rule 'retroactive', "
                                         "got 4 tensors"):
        plastic_rnn_fused(torch.zeros(1, 3, 4), w, w, torch.tensor(0.1), rule=get_rule("retroactive"),
                          modulator=mod, initial_state=(torch.zeros(1, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4),
                                         torch.zeros(1, 4, 4)))


def test_fused_and_plain_give_the_same_training_gradients():
    """The pattern task's model built from its config (`--impl`), float32: the same
    loss gradient for every parameter either way."""
    from plasticity.config import preset
    from plasticity.models import build_model
    from plasticity.tasks import make_task

    grads = {}
    for impl in ("fused", "autograd"):
        cfg = preset("patterns", "small", impl=impl, batch_size=4)
        task = make_task(cfg)
        torch.manual_seed(0)
        model = build_model(cfg, task.n_io)
        assert model.core.fused == (impl == "fused")
        batch = task.sample(4, torch.Generator().manual_seed(3))
        task.loss(model(task.inputs(batch))[0], batch).backward()
        grads[impl] = {name: p.grad for name, p in model.named_parameters()}
    for name, value in grads["autograd"].items():
        assert_close(grads["fused"][name], value, rtol=1e-4, name=name)


@pytest.mark.parametrize("call,error,message", [
    (lambda w: plastic_rnn_fused(torch.zeros(1, 3, 4), w, w, torch.tensor(0.1), rule=get_rule("retroactive")),
     ConfigError, r"rule 'retroactive' is neuromodulated: pass modulator=\(w_mod \[N, k\], b_mod \[k\]\)"),
    (lambda w: plastic_rnn_fused(torch.zeros(1, 3, 4), w, w, torch.tensor(0.1), rule=get_rule("neuromod")),
     ConfigError, r"rule 'neuromod' is neuromodulated: pass modulator=\(w_mod \[N, k\], b_mod \[k\]\)"),
    (lambda w: plastic_rnn_fused(torch.zeros(1, 3, 4), w, w, torch.tensor(0.1), rule=get_rule("neuromod"),
                                 modulator=(torch.zeros(4, 2), torch.zeros(2))),
     ShapeError, r"modulator must be \(w_mod \[4, 1 or 4\], b_mod \[1 or 4\]\), got \(\(4, 2\), \(2,\)\)"),
    (lambda w: plastic_rnn_fused(torch.zeros(1, 3, 5), w, w, torch.tensor(0.1), rule=HEBB),
     ShapeError, r"inputs must be \[B, T, 4\], got \(1, 3, 5\)"),
    (lambda w: plastic_rnn_fused(torch.zeros(1, 0, 4), w, w, torch.tensor(0.1), rule=HEBB),
     ShapeError, "at least one step"),
    (lambda w: plastic_rnn_fused(torch.zeros(1, 3, 4), w, w, torch.tensor(0.1), rule=HEBB, backend="cuda"),
     ConfigError, "unknown fused backend 'cuda'"),
    (lambda w: plastic_rnn_fused(torch.zeros(1, 3, 4, dtype=torch.float16), w.half(), w.half(),
                                 torch.tensor(0.1).half(), rule=HEBB, backend="cpp"),
     ConfigError, "the cpp backend runs float32/float64 on CPU"),
    (lambda w: plastic_rnn_fused(torch.zeros(1, 3, 4), w, w, torch.tensor(0.1), rule="hebb"),
     ConfigError, r"rule must be a plasticity rule \(plasticity.rules.get_rule\('hebb'\)\), got str 'hebb'"),
], ids=["rule", "no-modulator", "modulator-shape", "shape", "empty", "backend", "dtype", "rule-name"])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.zeros(4, 4))
    with pytest.raises(ConfigError, match="unknown implementation 'fast'"):
        PlasticRNN(4, impl="fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rule", ["hebb", "oja"])
def test_cuda_fused_path_matches_cpu(rule):
    cpu = _net(rule, n=32, dtype=torch.float32)
    gpu = _net(rule, n=32, dtype=torch.float32).cuda()
    x = _x(4, 30, 32, dtype=torch.float32)
    out_c, _ = cpu(x)
    out_g, _ = gpu(x.cuda())
    assert_close(out_g.cpu().double(), out_c.double(), rtol=1e-4, name="outputs")
    for a, b in zip(_grads(gpu, out_g), _grads(cpu, out_c), strict=True):
        assert_close(a.cpu().double(), b.double(), rtol=1e-3)


def test_a_build_lock_left_by_a_killed_process_does_not_hang_the_next_run():
    """A run SIGTERMed while torch built (or loaded) the C++ kernels leaves torch's `lock`
    file in the build folder; torch waits for it forever. The next run must clear it."""
    import subprocess
    import sys
    from pathlib import Path

    from torch.utils import cpp_extension

    from plasticity.nn.fused import cpp_kernels, cpp_source, module_name
    from plasticity.rules import get_rule

    if cpp_kernels(get_rule("hebb")) is None:
        pytest.skip("no C++ compiler here: the kernels fall back to torch ops (tested elsewhere)")
    folder = Path(cpp_extension._get_build_directory(module_name("hebb", cpp_source(get_rule("hebb"))), False))
    (folder / "lock").write_text("")  # what a killed builder leaves
    code = ("from plasticity.nn.fused import cpp_kernels; from plasticity.rules import get_rule; "
            "assert cpp_kernels(get_rule('hebb')) is not None")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert not (folder / "lock").exists()


@pytest.mark.parametrize("rule", ["hebb", "oja"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-connection", "shared"])
def test_cpp_kernels_fold_w_into_their_pass(rule, shared):
    """Given w, the C++ forward step returns the whole recurrent pre-activation
    post @ (w + alpha * H_next) and the backward stage's d pre includes grad_a @ w^T (both
    computed in the one pass over Hebb, no separate product over w), equal to the torch-op
    kernels; without w, z and d pre are the plastic parts alone. N = 37 spans the row
    blocks and two threads unevenly."""
    from plasticity.nn.fused import INVERT, TorchKernels, cpp_kernels
    from plasticity.rules import get_rule

    r = get_rule(rule)
    cpp, ref = cpp_kernels(r), TorchKernels(r.elementwise)
    g = torch.Generator().manual_seed(11)
    b, n = 3, 37
    rand = lambda *s: torch.randn(s, generator=g, dtype=torch.float64)  # noqa: E731
    pre, post, pre_p, post_p, ga = (torch.tanh(2 * rand(b, n)) for _ in range(5))
    alpha = 0.5 * rand() if shared else 0.5 * rand(n, n)
    eta, w, h, grad_h = torch.tensor(0.1, dtype=torch.float64), rand(n, n), 0.3 * rand(b, n, n), rand(b, n, n)
    keep = torch.ones(b, dtype=torch.float64)
    for given in (w, None):
        got = []
        for k in (cpp, ref):
            h_next = torch.empty_like(h)
            _, z = k.forward_step(h.clone(), h_next, pre, post, alpha, eta, None, True, given)
            hh, gg, dpre = h.clone(), grad_h.clone(), torch.zeros(b, n, dtype=torch.float64)
            dalpha, deta = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
            k.backward_stage(hh, gg, None, INVERT, True, pre, post, ga, keep, pre_p, post_p, alpha, eta, None, dpre,
                             dalpha, deta, given)
            got.append((z, dpre, h_next, hh, gg))
        for what, a, c in zip(("z", "dpre", "h_next", "h", "g"), *got, strict=True):
            assert_close(a, c, rtol=1e-12, name=f"{what} (w given: {given is not None})")
    plastic_z = cpp.forward_step(h.clone(), torch.empty_like(h), pre, post, alpha, eta, None, True)[1]
    with_w = cpp.forward_step(h.clone(), torch.empty_like(h), pre, post, alpha, eta, None, True, w)[1]
    assert_close(with_w - plastic_z, post @ w, rtol=1e-10, name="the w part of z")


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="MXCSR flags are x86 only")
def test_cpp_kernels_treat_subnormals_as_zero_and_leave_the_callers_mode_alone():
    """Inside the C++ kernels subnormal floats count as zero (they cost 10% of a reference
    run's time on the slow path); the calling thread's floating-point mode is restored, so
    torch ops after a kernel still produce subnormals."""
    from plasticity.nn.fused import cpp_kernels
    from plasticity.rules import get_rule

    k = cpp_kernels(get_rule("hebb"))
    h = torch.full((1, 4, 4), 1e-39)  # subnormal in float32
    assert (h * 0.5 != 0).all()
    h_next, zeros = torch.empty_like(h), torch.zeros(1, 4)
    k.forward_step(h, h_next, zeros, zeros, torch.tensor(1.0), torch.tensor(0.5), None, False)
    assert (h_next == 0).all()  # 1e-39 + 0.5 * (0 - 1e-39), a subnormal: flushed
    assert (h * 0.5 != 0).all() and (h * 0.5).abs().max() < 1e-38  # back in the caller: IEEE subnormals
    normal = torch.full((1, 4, 4), 1e-3)
    k.forward_step(normal, h_next, zeros, zeros, torch.tensor(1.0), torch.tensor(0.5), None, False)
    assert_close(h_next, normal * 0.5, rtol=0, name="normal values are untouched")


def test_the_fused_folder_imports_downwards_only():
    """Each file of `plasticity/nn/fused/` imports only the files its package docstring lists
    above it, function-level imports included, and never the package itself: no import
    circle inside the folder."""
    import ast
    import re
    from pathlib import Path

    from plasticity.nn import fused

    folder = Path(fused.__file__).parent
    order = re.findall(r"^    (\w+)\.py ", fused.__doc__, re.MULTILINE)
    assert sorted(order) == sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__"), order
    for rank, name in enumerate(order):
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.startswith(".") or module.startswith("plasticity.nn.fused"):
                    target = module.removeprefix("plasticity.nn.fused.")
                    assert target in order[:rank], f"{name}.py imports {module} (line {node.lineno}): only " \
                                                   f"{', '.join(order[:rank]) or 'nothing'} of the folder"


def test_prepare_builds_only_what_the_run_will_use():
    """`prepare` (the one place that decides to build the kernels): nothing for a
    baseline network or the autograd path, the config's rule for a plastic network on the
    fused path on a CPU."""
    import dataclasses

    from plasticity.config import preset
    from plasticity.nn.fused import prepare

    cfg = preset("patterns", "small")
    assert prepare(dataclasses.replace(cfg, model="rnn")).rules == ()
    assert prepare(dataclasses.replace(cfg, impl="autograd")).rules == ()
    done = prepare(dataclasses.replace(cfg, impl="fused", rule="oja"))
    assert done.rules == ("oja",) and done.ok
