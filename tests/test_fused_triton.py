"""The Triton kernels of the fused path (`plasticity/nn/fused/kernels_triton.py`).

Without a GPU they run in Triton's interpreter on CPU tensors. `TRITON_INTERPRET=1` must
be set before triton is imported (its own library functions are made at import), so
`test_kernels_under_the_interpreter` runs this file again in a subprocess with it set;
there, the tests marked `interpreted` run, at small sizes: values and gradients against the naive reference for every
fused rule, clipping, shared / free alpha, scalar / per-connection eta, resets, stored
states, neuromodulation (M(t) per network and per neuron); the kernel contract for every
rule and for a rule the kernels have never seen (built from its
elementwise functions alone); bfloat16 storage with float32 accumulation; and the
kernels compiled for a Hopper GPU (sm_90, ahead of time, no GPU needed). Tests marked
`gpu` run the same kernels on CUDA (`benchmarks/gpu_check.sh`).
"""

import itertools
import os
import subprocess
import sys

import pytest
import torch

from plasticity.nn import PlasticRNN
from plasticity.nn.fused import CKPT, INVERT, chosen_backend, get_kernels
from plasticity.nn.naive import plastic_rnn_naive
from plasticity.nn.plastic import eta_from_logit
from plasticity.rules import RULES, Elementwise, Rule, get_rule
from plasticity.rules.base import apply_elementwise
from plasticity.rules.elementwise import two_traces
from tests.conftest import assert_close
from tests.kernel_contract import check_kernel_contract
from tests.test_neuromod import _net as _modulated_net
from tests.test_neuromod import compare_modulated_with_naive
from tests.test_nn import _grads, _inputs, _rnn

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]')")
from plasticity.nn.fused import kernels_triton  # noqa: E402 -- needs triton

FUSED = sorted(name for name, rule in RULES.items() if rule.elementwise is not None)
PLAIN = [name for name in FUSED if not RULES[name].modulated]
"""The fused rules without neuromodulation (compared with `plastic_rnn_naive`)."""
MODULATED = [name for name in FUSED if RULES[name].modulated]
CASES = list(itertools.product(PLAIN, ("free", "shared"), ("scalar", "per-connection"), (None, 0.5)))
INTERPRETED = kernels_triton.interpreted()
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess of "
                                 "test_kernels_under_the_interpreter")
compiled = pytest.mark.skipif(INTERPRETED, reason="needs triton's compiler, not its interpreter")
needs_cuda = pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA device")


GPU_CASES = [("hebb", "free", "scalar", None), ("hebb", "shared", "per-connection", 0.5),
             ("oja", "free", "per-connection", 0.5), ("oja", "shared", "scalar", None)]


def _calm(rule, n, alpha_mode="free", eta_mode="scalar", clip=None, **kw):
    """A network whose dynamics do not amplify rounding (w, alpha ~ 1 / sqrt(N)): long
    float32 / bfloat16 runs can then be compared with float64 element by element."""
    torch.manual_seed(0)
    net = PlasticRNN(n, rule=rule, alpha_mode=alpha_mode, eta_mode=eta_mode, clip=clip, eta=0.1,
                     init_std=n ** -0.5, **kw).double()
    with torch.no_grad():
        net.plastic.alpha.mul_(3)
        if eta_mode == "per-connection":
            net.plastic.eta = torch.empty(net.plastic.eta.shape).uniform_(0.05, 0.3)
    return net


def _compare_with_naive(net, x, device="cpu", rtol=1e-10, h0_scale=0.2):
    """B batched episodes from a given state (y0, Hebb0) == B naive runs: outputs, final
    state, and gradients w.r.t. w, alpha, eta, y0 and Hebb0."""
    b, _, n = x.shape
    g = torch.Generator().manual_seed(5)
    y0 = (0.5 * torch.randn(b, n, generator=g, dtype=torch.float64)).requires_grad_()
    h0 = (h0_scale * torch.randn(b, n, n, generator=g, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(x.shape, generator=g, dtype=torch.float64)
    dev = net.to(device)
    out, (y_final, (h_final,)) = dev(x.to(device, net.plastic.w.dtype),
                                      state=(y0.to(device, net.plastic.w.dtype), (h0.to(device, net.plastic.w.dtype),)))
    loss = (out.double().cpu() * weights).sum() + h_final.double().cpu().pow(2).sum()
    fast = [t.double().cpu() for t in _grads(loss, dev, (y0, h0))]

    ref = {k: v.detach().double().cpu() for k, v in net.plastic.named_parameters()}
    for v in ref.values():
        v.requires_grad_()
    naive_loss, outs = 0, []
    for i in range(b):
        o, (y_i, h_i) = plastic_rnn_naive(ref["w"], ref["alpha"], eta_from_logit(ref["eta_logit"]),
                                          net.plastic.rule.name, x[i],
                                          input_mode=net.input_mode, clip=net.plastic.clip,
                                          initial_state=(y0[i], h0[i]))
        outs.append(o)
        naive_loss = naive_loss + (o * weights[i]).sum() + h_i.pow(2).sum()
        assert_close(y_final[i].double().cpu(), y_i, rtol, name="final y")
        assert_close(h_final[i].double().cpu(), h_i, rtol, name="final hebb")
    assert_close(out.double().cpu(), torch.stack(outs), rtol, name="outputs")
    naive = torch.autograd.grad(naive_loss, [ref["w"], ref["alpha"], ref["eta_logit"], y0, h0])
    for name, a, c in zip(("w", "alpha", "eta", "y0", "hebb0"), fast, naive, strict=True):
        assert_close(a, c, rtol, name=f"grad {name}")


# ------------------------------------------------------------------ interpreter (CPU)
@pytest.mark.slow
@compiled
def test_kernels_under_the_interpreter():
    """This file again, in a subprocess with TRITON_INTERPRET=1: the `interpreted` tests."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-m", "not gpu",
                           "--durations=3"], env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, timeout=900)
    report = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert " passed" in report and " failed" not in report, report
    print(report)

@pytest.mark.parametrize("rule,alpha_mode,eta_mode,clip", CASES, ids=["-".join(map(str, c)) for c in CASES])
@interpreted
def test_triton_matches_naive(rule, alpha_mode, eta_mode, clip):
    """float64, N = 12, T = 6, B = 2 (clip 0.5 clips: the initial Hebb reaches past it)."""
    net = _rnn(rule, alpha_mode, eta_mode, "add", clip, n=12, fused_backend="triton")
    _compare_with_naive(net, _inputs(2, 6, 12, "add"))
    assert chosen_backend() == "triton"


@pytest.mark.parametrize("rule", PLAIN)
@interpreted
def test_triton_clamped_inputs_match_naive(rule):
    net = _rnn(rule, "free", "per-connection", "clamp", 0.5, n=10, fused_backend="triton")
    _compare_with_naive(net, _inputs(2, 5, 10, "clamp"))


@pytest.mark.parametrize("rule", PLAIN)
@interpreted
def test_triton_stored_states_and_resets(rule):
    """eta = 1 (every state stored, none inverted) and `segment_steps` match the
    naive loop; episodes packed with a reset equal separate runs."""
    net = _rnn(rule, "free", "scalar", "add", None, n=8, fused_backend="triton")
    with torch.no_grad():
        net.plastic.eta.fill_(1.0)
    _compare_with_naive(net, _inputs(2, 5, 8, "add"))
    every = _rnn(rule, "free", "per-connection", "add", 0.5, n=8, segment_steps=2, fused_backend="triton")
    _compare_with_naive(every, _inputs(2, 6, 8, "add"))

    first, second = _inputs(2, 4, 8, "add", seed=2), _inputs(2, 3, 8, "add", seed=3)
    reset = torch.zeros(2, 7, dtype=torch.bool)
    reset[:, 4] = True
    out, state = net(torch.cat([first, second], 1), reset=reset)
    out_a, _ = net(first)
    out_b, state_b = net(second)
    assert_close(out, torch.cat([out_a, out_b], 1), name="outputs")
    assert_close(state.traces[0], state_b.traces[0], name="hebb")
    w = torch.randn_like(out)
    packed = _grads((out * w).sum(), net)
    separate = _grads((out_a * w[:, :4]).sum() + (out_b * w[:, 4:]).sum(), net)
    for name, a, c in zip(("w", "alpha", "eta"), packed, separate, strict=True):
        assert_close(a, c, name=f"grad {name}")


@pytest.mark.parametrize("rule", PLAIN)
@interpreted
def test_triton_float32_close_to_float64(rule):
    """float32 storage and arithmetic, N = 16 (one full tile), T = 8."""
    net = _rnn(rule, "free", "scalar", "add", 0.5, n=16, fused_backend="triton").float()
    _compare_with_naive(net, _inputs(2, 8, 16, "add"), rtol=2e-5)


@pytest.mark.parametrize("rule,alpha_mode,eta_mode,clip", GPU_CASES, ids=["-".join(map(str, c)) for c in GPU_CASES])
@interpreted
def test_triton_float32_what_the_gpu_test_runs(rule, alpha_mode, eta_mode, clip):
    """The cases of test_cuda_triton_matches_naive at N = 24 (2 x 2 tiles of 16 here,
    ragged edges), T = 10, with the tolerance the GPU test uses."""
    net = _calm(rule, 24, alpha_mode, eta_mode, clip, fused_backend="triton").float()
    _compare_with_naive(net, _inputs(2, 10, 24, "add"), rtol=2e-4)


MODULATED_CASES = list(itertools.product(MODULATED, ("network", "neuron"), ("free", "shared"), (None, 0.5)))


@pytest.mark.parametrize("rule,modulation,alpha_mode,clip", MODULATED_CASES,
                         ids=["-".join(map(str, c)) for c in MODULATED_CASES])
@interpreted
def test_triton_modulated_matches_naive(rule, modulation, alpha_mode, clip):
    """Neuromodulation on the Triton kernels, float64, N = 6: M(t) computed inside the
    episode from each step's activity, against the naive loop (values, final state, the
    gradients of w, alpha, eta, the read-out of M(t), y0 and Hebb0)."""
    net = _modulated_net(rule, modulation, alpha_mode, "add", clip, fused_backend="triton")
    assert net.fused
    compare_modulated_with_naive(net, "add", clip)


@pytest.mark.parametrize("rule", MODULATED)
@interpreted
def test_triton_modulated_float32_at_several_tiles(rule):
    """float32 storage and arithmetic, N = 24 (2 x 2 tiles of 16, ragged edges), clamped
    inputs, one M(t) per neuron."""
    net = _modulated_net(rule, "neuron", "free", "clamp", 0.5, n=24, fused_backend="triton").float()
    compare_modulated_with_naive(net, "clamp", 0.5, b=2, t=8, rtol=2e-4)


# Scaled Hebb, a rule that no kernel was written for: its elementwise functions are all
# the Triton kernels get. (Module level: triton.jit reads their source.)
def scaled_update(h, pre, post, eta, mod):
    return h + eta * (2.0 * pre * post - h)


def scaled_inverse(h_next, pre, post, eta, mod):
    return (h_next - 2.0 * eta * pre * post) / (1.0 - eta)


def scaled_d_h(h, pre, post, eta, mod):
    return 1.0 - eta


def scaled_d_pre(h, pre, post, eta, mod):
    return 2.0 * eta * post


def scaled_d_post(h, pre, post, eta, mod):
    return 2.0 * eta * pre


def scaled_d_eta(h, pre, post, eta, mod):
    return 2.0 * pre * post - h


SCALED = Rule("scaled-hebb", lambda *a, **k: None, elementwise=Elementwise(
    scaled_update, scaled_inverse, scaled_d_h, scaled_d_pre, scaled_d_post, scaled_d_eta))


@pytest.mark.parametrize("rule", [*FUSED, "scaled-hebb"])
@pytest.mark.parametrize("clip", [None, 0.4])
@pytest.mark.parametrize("shared", [False, True], ids=["per-connection", "shared"])
@interpreted
def test_triton_kernel_contract(rule, clip, shared):
    """One forward step and every backward mode (stage on/off x none / invert / stored /
    stored zero) equal the torch-op contract written from the rule's elementwise
    functions (modulated rules with M(t)), on a size that is not a multiple of the tile (N = 13)."""
    r = SCALED if rule == "scaled-hebb" else get_rule(rule)
    check_kernel_contract(kernels_triton.TritonKernels(r), r, clip, shared)


@pytest.mark.parametrize("rule", PLAIN)
@interpreted
def test_bfloat16_storage_accumulates_in_float32(rule):
    """Hebb stored in bfloat16: the update is computed in float32 from the stored values
    and rounded once (within one bfloat16 rounding of the float32 result), and z is
    summed in float32 from the stored (rounded) Hebb."""
    r = get_rule(rule)
    g = torch.Generator().manual_seed(4)
    b, n = 2, 16
    pre, post = (torch.tanh(2 * torch.randn(b, n, generator=g)) for _ in range(2))
    alpha, eta = 0.5 * torch.randn(n, n, generator=g), torch.tensor(0.1)
    h = (0.3 * torch.randn(b, n, n, generator=g)).bfloat16()
    h_next = torch.empty_like(h)
    _, z = kernels_triton.TritonKernels(r).forward_step(h, h_next, pre, post, alpha, eta, None, True)
    exact = apply_elementwise(r.elementwise.update, h.float(), pre, post, eta)
    assert h_next.dtype == torch.bfloat16
    assert ((h_next.float() - exact).abs() <= exact.abs() * 2**-8).all()  # half a bfloat16 step
    z_ref = torch.bmm(post.unsqueeze(1), alpha * h_next.float()).squeeze(1)
    assert_close(z, z_ref, rtol=1e-6, name="z")


@pytest.mark.parametrize("rule", PLAIN)
@interpreted
def test_bfloat16_episode_follows_the_float64_reference(rule):
    """A whole episode with bfloat16 storage: outputs and gradients within a few percent
    of float64, and no worse than the torch-op kernels that compute in bfloat16."""
    errors = {}
    for backend in ("triton", "torch"):
        net = _rnn(rule, "free", "scalar", "add", None, n=16, fused_backend=backend)
        ref = _rnn(rule, "free", "scalar", "add", None, n=16, impl="autograd")
        x = _inputs(2, 8, 16, "add")
        weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        exact_out, _ = ref(x)
        exact = (exact_out, *_grads((exact_out * weights).sum(), ref))
        net = net.bfloat16()
        out, _ = net(x.bfloat16())
        got = (out, *_grads((out.double() * weights).sum(), net))
        exact = [e.detach() for e in exact]
        errors[backend] = max(float((a.detach().double() - e).abs().max() / e.abs().max())
                              for a, e in zip(got, exact, strict=True))
    # Measured: 0.063 (hebb) with eta the sigmoid of a bfloat16 logit (0.043 with a raw
    # eta), torch ops 0.077 on the same run.
    assert errors["triton"] < 0.08, errors
    assert errors["triton"] <= errors["torch"] * 1.5, errors


@pytest.mark.parametrize("rule", MODULATED)
@interpreted
def test_bfloat16_modulated_episode_follows_the_float64_reference(rule):
    """The neuromodulated rules (retroactive: both traces) with bfloat16 storage, M(t) per
    neuron, clip 0.5, a calm network (unscaled read-out: in a chaotic one any rounding
    diverges, 20-80% for both kernel sets): outputs and the gradients of w, alpha, eta and
    M(t)'s read-out within a few percent of float64, and no worse than the torch-op kernels
    that compute in bfloat16. Measured: 0.017 (neuromod; torch ops 0.017), 0.015
    (retroactive; torch ops 0.012)."""
    from tests.test_neuromod import _params

    def calm(**kw):
        torch.manual_seed(0)
        return PlasticRNN(16, rule=rule, modulation="neuron", clip=0.5, eta=0.3, init_std=0.25, **kw).double()

    x = _inputs(2, 8, 16, "add")
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ref = calm(impl="autograd")
    exact_out, _ = ref(x)
    exact = [e.detach() for e in (exact_out, *torch.autograd.grad((exact_out * weights).sum(), _params(ref),
                                                                  allow_unused=True, materialize_grads=True))]
    errors = {}
    for backend in ("triton", "torch"):
        net = calm(fused_backend=backend).bfloat16()
        assert net.fused
        out, _ = net(x.bfloat16())
        got = (out, *torch.autograd.grad((out.double() * weights).sum(), _params(net), allow_unused=True,
                                         materialize_grads=True))
        # neuromod does not read eta: its gradient is zero on both sides (scale floored).
        errors[backend] = max(float((a.detach().double() - e).abs().max() / max(float(e.abs().max()), 1e-12))
                              for a, e in zip(got, exact, strict=True))
    assert errors["triton"] < 0.03, errors
    assert errors["triton"] <= errors["torch"] * 1.5, errors


@compiled
def test_triton_backend_needs_cuda_or_the_interpreter():
    from plasticity.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="the triton backend cannot run"):
        get_kernels("triton", torch.device("cpu"), torch.float32, rule=get_rule("hebb"))


@compiled
def test_jit_elementwise_keeps_the_rule_source():
    """The Triton function is made from the rule file's own source (no copy of the maths)."""
    fn = kernels_triton.jit_elementwise(get_rule("oja").elementwise.update)
    assert "eta * post * (pre - post * h)" in fn.src


@pytest.mark.slow
@pytest.mark.parametrize("rule", FUSED)
@compiled
def test_kernels_compile_for_hopper(rule):
    """Compiled ahead of time for sm_90 (an H100 / H200) with triton's own compiler and
    ptxas, no GPU needed: catches what the interpreter lets through (types, shapes)."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    forward, backward = kernels_triton._compiled(False)
    fn = kernels_triton._jitted(get_rule(rule).elementwise, False)
    target = GPUTarget("cuda", 90, 32)
    ptr, f32 = "*bf16", "*fp32"
    modulated = get_rule(rule).modulated
    two = two_traces(get_rule(rule).elementwise)
    sig = dict(h_ptr=ptr, hn_ptr=ptr, x_ptr=ptr, xn_ptr=ptr, pre_ptr=f32, post_ptr=f32, alpha_ptr=f32, eta_ptr=f32,
               mod_ptr=f32, z_ptr=f32, flag_ptr="*i32", batch="i32", n="i32", rows="i32", s_ai="i32", s_aj="i32",
               s_ei="i32", s_ej="i32", clip_ptr=f32)
    const = dict(UPDATE=fn["update"], UPDATE_E=fn.get("update_e", fn["update"]), HAS_H=True, CLIP=True, WANT_Z=True,
                 MOD=modulated, TWO=two, ACC=tl.float32, BI=64, BJ=64)
    kernel = triton.compile(ASTSource(forward, {**sig, **dict.fromkeys(const, "constexpr")}, const), target=target)
    assert "cubin" in kernel.asm
    sig = {name: f32 for name in ("pre_ptr", "post_ptr", "ga_ptr", "keep_ptr", "prep_ptr", "postp_ptr", "mod_ptr",
                                  "modp_ptr", "alpha_ptr", "eta_ptr", "dpre_ptr", "col_ptr", "dmod_ptr", "dalpha_ptr",
                                  "deta_ptr")}
    sig = dict(h_ptr=ptr, g_ptr=ptr, ck_ptr=ptr, x_ptr=ptr, gx_ptr=ptr, ckx_ptr=ptr, **sig, batch="i32", n="i32",
               s_ai="i32", s_aj="i32", s_ei="i32", s_ej="i32", clip_ptr=f32)
    fns = {name.upper(): fn.get(name, fn["d_h"]) for name in kernels_triton._KERNEL_FIELDS}
    # A two-trace rule's states are stored, never inverted.
    const = dict(**fns, STAGE=True, PREV=CKPT if two else INVERT, CLIP=True, MOD=modulated, TWO=two, ACC=tl.float32,
                 BI=64, BJ=64)
    kernel = triton.compile(ASTSource(backward, {**sig, **dict.fromkeys(const, "constexpr")}, const), target=target)
    assert "cubin" in kernel.asm


# ------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rule,alpha_mode,eta_mode,clip", GPU_CASES, ids=["-".join(map(str, c)) for c in GPU_CASES])
def test_cuda_triton_matches_naive(rule, alpha_mode, eta_mode, clip):
    """Compiled kernels on the GPU, float32, N = 100 (2 x 2 tiles of 64, ragged edges),
    against the float64 naive loop on CPU; `auto` picks Triton on CUDA."""
    net = _calm(rule, 100, alpha_mode, eta_mode, clip).float()
    _compare_with_naive(net, _inputs(3, 12, 100, "add"), device="cuda", rtol=2e-4)
    assert chosen_backend() == "triton"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rule", PLAIN)
def test_cuda_matches_cpu_and_bfloat16_follows(rule):
    """N = 200 (4 x 4 tiles, ragged edges), 30 steps from zero Hebb: Triton on CUDA equals
    the fused path on CPU (torch-op kernels) in float32; bfloat16 storage on CUDA stays
    within 0.05 of float64 (measured in the interpreter at N = 64: 0.010 hebb, 0.011 oja)."""
    x = _inputs(4, 30, 200, "add")
    cpu = _calm(rule, 200, fused_backend="torch").float()
    gpu = _calm(rule, 200).float().cuda()
    out_c, _ = cpu(x.float())
    out_g, _ = gpu(x.float().cuda())
    assert_close(out_g.cpu().double(), out_c.double(), rtol=1e-4, name="outputs")
    w = torch.randn(out_c.shape, generator=torch.Generator().manual_seed(8))
    for a, b in zip(_grads((out_g * w.cuda()).sum(), gpu), _grads((out_c * w).sum(), cpu), strict=True):
        assert_close(a.cpu().double(), b.double(), rtol=1e-3)
    exact, _ = _calm(rule, 200, impl="autograd")(x)
    out, _ = _calm(rule, 200).cuda().bfloat16()(x.cuda().bfloat16())
    assert float((out.double().cpu() - exact.detach()).abs().max()) < 0.05


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("modulation", ["network", "neuron"])
@pytest.mark.parametrize("rule", MODULATED)
def test_cuda_triton_modulated_matches_naive(rule, modulation):
    """neuromod and retroactive (two traces) on the compiled kernels, float32 on the GPU,
    N = 100 (ragged tiles of 64), with clipping (recomputed states), against the float64
    naive loop on CPU. A calm network (w ~ 1 / sqrt(N)); 1e-3: the C++ and torch-op
    kernels in float32 on CPU pass this comparison at 5e-4 (neuromod; 2.5e-4 but for the
    C++ kernels per neuron) and 1e-4 (retroactive)."""
    torch.manual_seed(0)
    net = PlasticRNN(100, rule=rule, modulation=modulation, clip=0.5, init_std=0.1).double()
    with torch.no_grad():
        net.plastic.alpha.mul_(3)
        net.modulator.weight.mul_(3)
    net = net.float().cuda()
    assert net.fused
    compare_modulated_with_naive(net, "add", 0.5, b=3, t=12, rtol=1e-3)
    assert chosen_backend() == "triton"
