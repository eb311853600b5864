"""The example plugin's own tests, run against the installed package (`pip install
examples/recall-plugin`, then `python -m pytest` in its folder): its entry point, its task,
its rule on plasticity's fused kernels against plasticity's plain autograd (float64,
values and gradients), and a short training run that learns."""

from __future__ import annotations

from importlib.metadata import entry_points

import plasticity_recall.plugin as plugin
import pytest
import torch

from plasticity.config import CONFIGS, preset
from plasticity.nn import PlasticRNN
from plasticity.rules import RULES
from plasticity.tasks import make_task


def test_the_entry_point_names_the_plugin_module():
    found = [ep for ep in entry_points(group="plasticity.plugins") if ep.name == "recall"]
    if not found:
        pytest.skip("plasticity-recall is not installed (pip install examples/recall-plugin): no entry point")
    assert found[0].value == "plasticity_recall.plugin"
    assert found[0].load() is plugin


def test_importing_the_plugin_registers_its_task_rule_and_presets():
    assert CONFIGS["recall"] is plugin.RecallConfig
    assert "instar" in RULES
    assert preset("recall", "large").num_pairs == 6


def test_a_right_answer_has_no_error_and_a_wrong_one_all_bits_wrong():
    cfg = preset("recall", "small")
    task = make_task(cfg)
    episode = task.sample(16, torch.Generator().manual_seed(0))
    assert task.inputs(episode).shape == (16, cfg.steps(), cfg.key_size + cfg.value_size + 1)
    outputs = torch.zeros(16, cfg.steps(), task.n_io)
    target = episode.values[torch.arange(16), episode.which]
    outputs[:, -1, cfg.key_size:cfg.key_size + cfg.value_size] = target
    right = task.metrics(outputs, episode)
    assert right["bit_error"] == 0.0 and right["loss"] == 0.0
    outputs[:, -1, cfg.key_size:cfg.key_size + cfg.value_size] = -target
    assert task.metrics(outputs, episode)["bit_error"] == 1.0


@pytest.mark.parametrize("eta", [0.05, 0.4])
def test_instar_on_the_fused_kernels_equals_plain_autograd(eta):
    """The rule as plasticity runs it by default (fused C++ kernels built from the rule's
    elementwise form) against the same network on plain autograd, float64."""
    x = 3 * torch.randn(3, 40, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = torch.randn(3, 40, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = {}
    for impl in ("fused", "autograd"):
        torch.manual_seed(0)
        net = PlasticRNN(12, rule="instar", eta=eta, init_std=0.3, impl=impl).to(torch.float64)
        out = net(x)
        out = out[0] if isinstance(out, tuple) else out
        params = [p for p in net.parameters() if p.requires_grad]
        got[impl] = (out.detach(), torch.autograd.grad((out * weights).sum(), params))
    (out_f, grads_f), (out_a, grads_a) = got["fused"], got["autograd"]
    assert torch.allclose(out_f, out_a, rtol=1e-9, atol=1e-12)
    for gf, ga in zip(grads_f, grads_a, strict=True):
        assert torch.allclose(gf, ga, rtol=1e-7, atol=1e-10)


def test_a_short_training_run_learns_recall(tmp_path):
    from plasticity.train import train

    cfg = preset("recall", "small", rule="instar", episodes=1500, eval_every=750, eval_episodes=256,
                 save_every=1500, out=str(tmp_path), seed=0)
    result = train(cfg, progress=False)
    assert result.checkpoint.is_file()
    last = result.final
    assert last["step"] == 1500 and last["eval/bit_error"] < 0.3, result.history  # chance is 0.5
