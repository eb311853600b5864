"""The learned eta: valid by construction (a sigmoid of `eta_logit`), its own learning
rate (`--eta-lr`), checkpoints old and new; and the evaluation's 95% interval."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plasticity.config import preset
from plasticity.errors import ETA_MIN, CheckpointError, ConfigError
from plasticity.nn import PlasticLinear, PlasticRNN
from plasticity.nn.fused import plastic_rnn_fused
from plasticity.rules import rule_names
from plasticity.tasks import make_task
from plasticity.train import model_from_checkpoint, train
from plasticity.train.common import restore_state
from plasticity.train.episodic import CI95_Z, HeldOut, evaluate
from plasticity.train.optim import ETA_LR_RATIO, make_optimizer
from tests.conftest import assert_close

RULES = [("hebb", "none"), ("oja", "none"), ("retroactive", "network")]


@pytest.mark.parametrize("eta_mode", ["scalar", "per-connection"])
@pytest.mark.parametrize("rule,modulation", RULES, ids=[r for r, _ in RULES])
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["up", "down"])
def test_eta_stays_in_range_under_adversarial_gradients(rule, modulation, eta_mode, direction):
    """Hundreds of Adam steps with a huge learning rate, all pushing eta one way (plus
    the network's own loss): eta ends at the end of its range, never beyond, and the
    network still runs to finite outputs."""
    torch.manual_seed(0)
    net = PlasticRNN(6, rule=rule, modulation=modulation, eta_mode=eta_mode, eta=0.1, clip=1.0, impl="autograd")
    opt = torch.optim.Adam([net.plastic.eta_logit], lr=50.0)
    x = torch.randn(2, 3, 6)
    lowest = float(torch.tensor(ETA_MIN))  # ETA_MIN in float32
    for _ in range(300):
        out, _ = net(x)
        loss = out.pow(2).mean() - direction * 1e6 * net.plastic.eta.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        eta = net.plastic.eta.detach()
        assert bool(torch.isfinite(eta).all()) and float(eta.min()) >= lowest and float(eta.max()) <= 1.0
    end = 1.0 if direction > 0 else ETA_MIN
    assert_close(eta, torch.full_like(eta, end), rtol=1e-3, name="eta at the end of its range")
    assert bool(torch.isfinite(net(x)[0]).all())


def test_eta_is_the_value_given_and_assignable():
    layer = PlasticLinear(3, 4, eta=0.02, eta_mode="per-connection")
    assert_close(layer.plastic.eta, torch.full((3, 4), 0.02), rtol=1e-6)
    assert [n for n, _ in layer.named_parameters()] == ["bias", "plastic.w", "plastic.alpha", "plastic.eta_logit"]
    layer.plastic.eta = torch.linspace(0.1, 0.9, 12).reshape(3, 4)
    assert_close(layer.plastic.eta, torch.linspace(0.1, 0.9, 12).reshape(3, 4), rtol=1e-6)
    with pytest.raises(ConfigError, match=r"eta must be in \[1e-06, 1\]"):
        layer.plastic.eta = -0.5
    fixed_one = PlasticRNN(4, eta=1.0, learn_eta=False)
    assert float(fixed_one.plastic.eta) == 1.0  # exactly: the fused path stores every state for it


@pytest.mark.parametrize("bad,message", [
    (dict(eta=1.0), "a learned eta must be below 1"),
    (dict(eta=1e-9), "eta must be at least 1e-06"),
    (dict(eta_lr=0.0), "eta_lr must be > 0"),
])
def test_config_rejects_etas_the_parameterisation_cannot_hold(bad, message):
    with pytest.raises(ConfigError, match=message):
        preset("patterns", "small", **bad)


@pytest.mark.parametrize("rule", rule_names(modulated=False))
@pytest.mark.parametrize("eta_mode", ["scalar", "per-connection"])
def test_gradient_is_the_chain_rule_through_the_parameterisation(rule, eta_mode):
    """d loss / d eta_logit from the layer (fused path) == d loss / d eta (the fused
    function given eta as a leaf) x d eta / d eta_logit, and the plain path agrees."""
    torch.manual_seed(0)
    net = PlasticRNN(5, rule=rule, eta_mode=eta_mode, eta=0.2, init_std=0.3).double()
    plain = PlasticRNN(5, rule=rule, eta_mode=eta_mode, eta=0.2, init_std=0.3, impl="autograd").double()
    plain.load_state_dict(net.state_dict())
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    (g_logit,) = torch.autograd.grad(net(x)[0].pow(2).sum(), [net.plastic.eta_logit])
    (g_plain,) = torch.autograd.grad(plain(x)[0].pow(2).sum(), [plain.plastic.eta_logit])
    p = net.plastic
    eta = p.eta.detach().requires_grad_()
    out, _ = plastic_rnn_fused(x, p.w, p.alpha, eta, rule=p.rule)
    (g_eta,) = torch.autograd.grad(out.pow(2).sum(), [eta])
    s = torch.sigmoid(p.eta_logit.detach())
    assert_close(g_logit, g_eta * (1 - ETA_MIN) * s * (1 - s), rtol=1e-9, name="chain rule")
    assert_close(g_logit, g_plain, rtol=1e-9, name="fused vs plain")


def _small(tmp_path, **kw):
    base = dict(episodes=64, eval_every=64, eval_episodes=32, save_every=64, out=str(tmp_path))
    return preset("patterns", "small", **{**base, **kw})


def test_eta_lr_reaches_the_eta_group_and_nothing_else():
    cfg = _small("unused", eta_mode="per-connection", lr=1e-3, eta_lr=2e-5)
    model = make_optimizer_model(cfg)
    opt = make_optimizer(model, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"weights", "eta"}
    assert groups["eta"]["lr"] == 2e-5 and groups["weights"]["lr"] == 1e-3
    assert [id(p) for p in groups["eta"]["params"]] == [id(model.core.plastic.eta_logit)]
    others = {id(p) for n, p in model.named_parameters() if not n.endswith("eta_logit")}
    assert {id(p) for p in groups["weights"]["params"]} == others
    default = make_optimizer(model, cfg.replace(eta_lr=None))
    assert default.param_groups[1]["lr"] == pytest.approx(1e-3 * ETA_LR_RATIO)
    fixed = make_optimizer(make_optimizer_model(cfg.replace(learn_eta=False)), cfg.replace(learn_eta=False))
    assert [g["name"] for g in fixed.param_groups] == ["weights"]


def make_optimizer_model(cfg):

    return make_task(cfg).build_model(cfg)


def test_a_step_moves_only_eta_by_its_own_rate():
    """One Adam step moves each parameter by about its group's learning rate: eta_logit by
    eta_lr, the weights by lr (Adam's first step is lr x sign(grad))."""
    cfg = _small("unused", lr=1e-3, eta_lr=1e-5)
    model = make_optimizer_model(cfg)
    opt = make_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = make_task(cfg)
    batch = task.sample(8, torch.Generator().manual_seed(0))
    task.loss(model(task.inputs(batch))[0], batch).backward()
    opt.step()
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert moved["core.plastic.eta_logit"] == pytest.approx(1e-5, rel=1e-2)
    assert moved["core.plastic.w"] == pytest.approx(1e-3, rel=1e-2)


def test_checkpoint_round_trip_resume_and_old_format(tmp_path):
    cfg = _small(tmp_path, eta_mode="per-connection", eta=0.05, lr=3e-3, eta_lr=1e-2)
    result = train(cfg, progress=False)
    ckpt = torch.load(result.checkpoint, weights_only=False)
    assert "core.plastic.eta_logit" in ckpt["model"] and "core.plastic.eta" not in ckpt["model"]
    eta = result.model.core.plastic.eta.detach()
    assert float((eta - 0.05).abs().max()) > 1e-4  # it learned
    assert result.final["plastic/eta_mean"] == pytest.approx(float(eta.mean()))
    model, _, _ = model_from_checkpoint(result.checkpoint, type(cfg))
    assert torch.equal(model.core.plastic.eta.detach(), eta)

    # Resume: each group keeps this run's learning rate, not the checkpoint's.
    resumed = make_optimizer_model(cfg)
    opt = make_optimizer(resumed, cfg.replace(lr=1e-4, eta_lr=1e-6))
    restore_state(resumed, opt, ckpt)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-6]

    # A checkpoint from before the parameterisation: `eta` holds the value.
    old = dict(ckpt["model"])
    old["core.plastic.eta"] = eta.clone()
    del old["core.plastic.eta_logit"]
    converted = make_optimizer_model(cfg)
    converted.load_state_dict(old)
    assert_close(converted.core.plastic.eta.detach(), eta, rtol=1e-6, name="converted eta")
    # ... and its one-group optimiser state cannot be resumed: one line says why.
    one_group = torch.optim.Adam(converted.parameters(), lr=1e-3)
    with pytest.raises(CheckpointError, match="before eta had its own learning rate"):
        restore_state(converted, make_optimizer(converted, cfg), {**ckpt, "model": old,
                                                                 "optimizer": one_group.state_dict()})
    # A raw eta that went out of range cannot be converted.
    old["core.plastic.eta"] = eta - 0.1
    with pytest.raises(CheckpointError, match=r"outside \(0, 1\]: it was trained before") as err:
        make_optimizer_model(cfg).load_state_dict(old)
    assert "\n" not in str(err.value)


class _Answers(nn.Module):
    """Answers a pattern episode with a chosen number of wrong bits per episode (the
    first `wrong[i]` bits of episode i flipped), so the evaluation's numbers are known."""

    def __init__(self, task, wrong):
        super().__init__()
        self.task, self.wrong, self.batches = task, wrong, []
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, inputs, state=None, reset=None):
        ep = self.batches.pop(0)
        out = torch.zeros(inputs.shape)
        answer = ep.target.clone()
        for i in range(len(answer)):
            answer[i, :self.wrong.pop(0)] *= -1
        out[:, -1, :self.task.size] = answer
        return out, None


def test_evaluation_interval_is_over_episodes():
    cfg = _small("unused", eval_episodes=40)
    task = make_task(cfg)
    heldout = HeldOut(task, 40, seed=3, chunk=8)
    batches = list(heldout)
    assert len(batches) == 5 and all(a.target.equal(b.target) for a, b in zip(batches, heldout, strict=True))
    wrong = [int(k) for k in torch.randint(0, 6, (40,), generator=torch.Generator().manual_seed(0))]
    model = _Answers(task, list(wrong))
    model.batches = list(heldout)
    m = evaluate(model, task, heldout, "cpu")
    per_episode = torch.tensor(wrong, dtype=torch.float64) / task.size
    assert m["bit_error_all"] == pytest.approx(float(per_episode.mean()))
    assert m["bit_error_all_ci95"] == pytest.approx(CI95_Z * float(per_episode.std()) / math.sqrt(40))
    assert {"bit_error_erased", "bit_error_erased_ci95", "loss_ci95"} <= set(m)


def test_evaluation_interval_covers_the_true_error_about_95_percent_of_the_time():
    """Episodes whose bits are wrong with probability p: over 200 evaluations of 64
    episodes each, the interval contains p in about 95% of them."""
    cfg = _small("unused")
    task = make_task(cfg)
    g = torch.Generator().manual_seed(1)
    p, hits, trials = 0.02, 0, 200
    heldout = HeldOut(task, 64, seed=5, chunk=64)
    for _ in range(trials):
        wrong = torch.binomial(torch.full((64,), float(task.size)), torch.full((64,), p), generator=g)
        model = _Answers(task, [int(k) for k in wrong])
        model.batches = list(heldout)
        m = evaluate(model, task, heldout, "cpu")
        hits += abs(m["bit_error_all"] - p) <= m["bit_error_all_ci95"]
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_large_heldout_sets_are_redrawn_identically_not_kept():
    cfg = preset("patterns", "reference")
    task = make_task(cfg)
    heldout = HeldOut(task, 96, seed=1, chunk=4)  # 96 x 106 x 1001 floats = 41 MB: kept
    assert heldout.kept is not None
    big = HeldOut(task, 512, seed=1, chunk=4)  # 217 MB: drawn again at each pass
    assert big.kept is None and len(big) == 128
    first = [ep.target for _, ep in zip(range(3), big, strict=False)]
    again = [ep.target for _, ep in zip(range(3), big, strict=False)]
    assert all(a.equal(b) for a, b in zip(first, again, strict=True))
    assert big.first().target.equal(first[0])
