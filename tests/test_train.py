"""Training: learning on the small preset, baselines, checkpoints, resume, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from plasticity.config import PatternsConfig, preset
from plasticity.errors import CheckpointError
from plasticity.tasks import PatternTask
from plasticity.train import TrainingDiverged, load_checkpoint, model_from_checkpoint, save_checkpoint, train


def small(tmp_path, **kw):
    base = dict(episodes=6000, eval_every=2000, eval_episodes=256, save_every=2000, out=str(tmp_path))
    return preset("patterns", "small", **{**base, **kw})


def test_small_preset_learns_and_reports(tmp_path):
    calls = []
    result = train(small(tmp_path), report=lambda step, m, files: calls.append((step, m, files)), progress=False)
    steps = [c[0] for c in calls]
    assert steps == [2016, 4000, 6000]  # the last batch is cut to --episodes
    first, last = calls[0][1], calls[-1][1]
    assert {"train/loss", "eval/loss", "eval/bit_error_erased", "perf/episodes_per_s", "plastic/eta_mean"} <= set(last)
    assert last["model/params"] == 2 * 51 * 51 + 1  # w, alpha (free) and one eta
    assert last["eval/bit_error_erased"] < 0.12 < 0.5, last  # chance on erased bits is 0.5
    assert last["eval/loss"] < first["eval/loss"]
    assert calls[-1][2]["completion"].is_file()
    assert (result.run_dir / "checkpoint.pt").is_file()
    assert (result.run_dir / "learning_curve.png").is_file()
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == steps


def test_non_plastic_rnn_does_not_learn_the_small_task(tmp_path):
    result = train(small(tmp_path, model="rnn"), progress=False)
    assert result.final["eval/bit_error_erased"] > 0.3


def test_resume_continues_exactly(tmp_path):
    straight = train(small(tmp_path / "a", episodes=1024, eval_every=512, save_every=512), progress=False)
    half = train(small(tmp_path / "b", episodes=512, eval_every=512, save_every=512), progress=False)
    resumed = train(small(tmp_path / "b", episodes=1024, eval_every=512, save_every=512),
                    resume=half.checkpoint, progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["step"] for h in resumed.history] == [512, 1024]
    assert resumed.history[-1]["eval/loss"] == straight.history[-1]["eval/loss"]


def test_resume_takes_architecture_from_checkpoint(tmp_path):
    first = train(small(tmp_path, episodes=64, eval_every=64, rule="oja", extra_neurons=3), progress=False)
    # The new command line asks for another rule and size: the checkpoint wins for those.
    again = train(small(tmp_path, episodes=128, eval_every=64), resume=first.checkpoint, progress=False)
    ckpt = load_checkpoint(again.checkpoint)
    assert ckpt["config"]["rule"] == "oja" and ckpt["config"]["extra_neurons"] == 3
    assert ckpt["episode"] == 128


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_state(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = PatternTask.loss

    def loss(self, outputs, episode):
        calls["n"] += 1
        value = real_loss(self, outputs, episode)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(PatternTask, "loss", loss)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at episode 64: lower --lr"):
        train(small(tmp_path, episodes=500), progress=False)
    (ckpt,) = tmp_path.glob("*/checkpoint.pt")
    state = load_checkpoint(ckpt)
    assert state["episode"] == 64
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _a_checkpoint(tmp_path):
    return train(small(tmp_path, episodes=32, eval_every=32), progress=False).checkpoint


def test_checkpoint_roundtrip_rebuilds_the_model(tmp_path):
    path = _a_checkpoint(tmp_path)
    model, cfg, ckpt = model_from_checkpoint(path, PatternsConfig)
    assert cfg.preset == "small" and ckpt["episode"] == 32
    assert set(model.state_dict()) == set(ckpt["model"])


@pytest.mark.parametrize("damage,message", [
    ("missing", "not found"),
    ("truncated", "is not a readable checkpoint"),
    ("garbage", "is not a readable checkpoint"),
    ("foreign", "is not a plasticity checkpoint"),
    ("pickle", "is not a readable checkpoint"),
])
def test_unusable_checkpoints_raise_one_clear_error(tmp_path, damage, message):
    path = _a_checkpoint(tmp_path)
    bad = tmp_path / "bad.pt"
    if damage == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x00not a checkpoint" * 100)
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    elif damage == "pickle":
        # An arbitrary object: weights_only loading must refuse to unpickle it.
        torch.save({"format": "plasticity-checkpoint", "evil": PatternsConfig()}, bad)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = _a_checkpoint(tmp_path)
    before = path.read_bytes()
    model, cfg, _ = model_from_checkpoint(path, PatternsConfig)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, config=cfg.to_dict(), episode=99)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
