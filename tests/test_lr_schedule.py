"""--lr-schedule cosine: both learning rates (--lr, --eta-lr) follow PyTorch's
CosineAnnealingLR over the run's episodes, from the episode alone (so resuming continues
it: tests/test_resume.py runs the pattern case with it)."""

from __future__ import annotations

import math

import pytest
import torch

from plasticity.config import preset
from plasticity.tasks import make_task
from plasticity.train import train
from plasticity.train.optim import lr_factor, make_optimizer, set_learning_rates


def _cfg(tmp_path, **kw):
    base = dict(episodes=640, eval_every=128, eval_episodes=32, save_every=640, out=str(tmp_path),
                lr=2e-3, eta_lr=4e-5, lr_schedule="cosine", lr_final=0.1)
    return preset("patterns", "small", **{**base, **kw})


def test_cosine_factor_matches_torch_cosine_annealing(tmp_path):
    cfg = _cfg(tmp_path)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.episodes, eta_min=cfg.lr * cfg.lr_final)
    for episode in range(cfg.episodes + 1):
        assert cfg.lr * lr_factor(cfg, episode) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        torch_schedule.step()
    assert lr_factor(cfg, 0) == 1.0 and lr_factor(cfg, cfg.episodes) == pytest.approx(0.1)
    assert lr_factor(cfg, 10 * cfg.episodes) == pytest.approx(0.1), "past the end it stays at the final rate"
    assert lr_factor(cfg.replace(lr_schedule="constant"), cfg.episodes // 2) == 1.0


def test_both_groups_follow_the_schedule_in_proportion(tmp_path):
    cfg = _cfg(tmp_path)
    model = make_task(cfg).build_model(cfg)
    opt = make_optimizer(model, cfg)
    set_learning_rates(opt, cfg, cfg.episodes // 2)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    half = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))
    assert lrs == {"weights": pytest.approx(2e-3 * half), "eta": pytest.approx(4e-5 * half)}


def test_a_run_logs_its_decaying_learning_rate(tmp_path):
    cfg = _cfg(tmp_path)
    lrs = [h["train/lr"] for h in train(cfg, progress=False).history]
    assert len(lrs) == 5 and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    # The rate of the last step (at episode 640 - batch 32), just above the final 0.1 x lr.
    assert lrs[-1] == pytest.approx(2e-3 * lr_factor(cfg, 640 - 32)) and lrs[-1] < 2e-3 * 0.11
    constant = train(_cfg(tmp_path / "c", lr_schedule="constant"), progress=False)
    assert {h["train/lr"] for h in constant.history} == {2e-3}


@pytest.mark.parametrize("kw,message", [
    (dict(lr_final=1.5), "lr_final must be in [0, 1]"),
    (dict(lr_schedule="linear"), "unknown lr schedule .linear.: choose one of constant, cosine"),
])
def test_bad_schedule_settings_are_refused(tmp_path, kw, message):
    from plasticity.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        _cfg(tmp_path, **kw)
