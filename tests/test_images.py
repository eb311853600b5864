"""The natural-image task: episode layout, data splits, the three models, and learning."""

from __future__ import annotations

import pytest
import torch

from plasticity.config import preset
from plasticity.tasks import ImageTask
from plasticity.train import train
from tests.conftest import SHARED_DATA, needs_shared_data

PER_BATCH = 30  # images per generated CIFAR-10 batch (tests/conftest.py generated_data)


@pytest.fixture(autouse=True)
def data_env(tmp_path, monkeypatch, generated_data):
    monkeypatch.setenv("PLASTICITY_DATA", str(generated_data))
    monkeypatch.setenv("PLASTICITY_CACHE", str(tmp_path / "cache"))


def small(**over):
    return preset("images", "small", **over)


def test_episode_layout():
    cfg = small(erase_half="top")
    task = ImageTask(cfg)
    ep = task.sample(4, torch.Generator().manual_seed(0))
    step = cfg.present_steps + cfg.gap_steps
    assert ep.inputs.shape == (4, task.steps, 16 * 16 + 1) and task.steps == 3 * 2 * step + 3
    for b in range(4):
        shown = ep.inputs[b, ::step, :256]  # the first step of each presentation
        # Each cycle shows every image of the episode exactly once.
        for cycle in range(cfg.num_cycles):
            block = shown[cycle * 3:(cycle + 1) * 3]
            assert {tuple(x.tolist()) for x in block} == {tuple(x.tolist()) for x in ep.images[b]}
        assert (ep.inputs[b, cfg.present_steps:step, :256] == 0).all()  # the gap after a presentation
        assert any(torch.equal(ep.target[b], im) for im in ep.images[b])
    assert (ep.inputs[:, :, 256] == 1).all()  # bias neuron
    # The cue is the target with its top half zeroed, shown for the test steps.
    assert (ep.cue[:, :128] == 0).all() and torch.equal(ep.cue[:, 128:], ep.target[:, 128:])
    assert torch.equal(ep.inputs[:, -1, :256], ep.cue) and ep.erased[:, :128].all() and not ep.erased[:, 128:].any()


def test_random_erasure_uses_both_halves():
    ep = ImageTask(small()).sample(64, torch.Generator().manual_seed(1))
    top = ep.erased[:, 0]
    assert 0 < int(top.sum()) < 64


def test_splits_use_different_images():
    task = ImageTask(small(image_size=32))
    held, test = task.heldout(), task.for_split("test")
    train_set = {tuple(x[:64].tolist()) for x in task.images}
    assert len(task.images) == 4 * PER_BATCH and len(held.images) == len(test.images) == PER_BATCH
    assert not any(tuple(x[:64].tolist()) in train_set for x in held.images)
    assert not any(tuple(x[:64].tolist()) in train_set for x in test.images)


def test_downsampling_keeps_the_mean():
    full = ImageTask(small(image_size=32)).images.reshape(-1, 32, 32)
    half = ImageTask(small(image_size=16)).images.reshape(-1, 16, 16)
    assert torch.allclose(full.mean((1, 2)), half.mean((1, 2)), atol=1e-5)


@pytest.mark.parametrize("model", ["plastic", "rnn", "lstm"])
def test_models_run_and_backpropagate(model):
    cfg = small(model=model, hidden=32)
    task = ImageTask(cfg)
    net = task.build_model(cfg)
    ep = task.sample(2, torch.Generator().manual_seed(0))
    out, _ = net(task.inputs(ep))
    assert out.shape == (2, task.steps, task.n_io)
    task.loss(out, ep).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    # Clamped neurons take their input: the shown pixels are reproduced exactly.
    if model != "lstm":
        clamped = ep.inputs[:, 0] != 0
        assert torch.equal(out[:, 0][clamped], ep.inputs[:, 0][clamped])


def test_figure_has_images_cue_output_target(tmp_path):
    task = ImageTask(small())
    ep = task.sample(1, torch.Generator().manual_seed(0))
    fig = task.figure(ep.inputs, ep)
    assert [ax.get_title() for ax in fig.axes] == ["image 1", "image 2", "image 3", "cue (half erased)",
                                                  "network output", "target"]


@pytest.mark.slow
@needs_shared_data
def test_plastic_network_learns_to_complete_unseen_images(tmp_path, monkeypatch):
    """8x8 images, short episodes: the held-out loss (images never trained on) falls well
    below the loss of answering with the cue alone."""
    monkeypatch.setenv("PLASTICITY_DATA", str(SHARED_DATA))
    cfg = small(image_size=8, num_cycles=2, present_steps=3, gap_steps=1, episodes=1600, batch_size=16, lr=3e-3,
                eval_every=800, eval_episodes=128, save_every=800, out=str(tmp_path), seed=0)
    result = train(cfg, progress=False)
    first, last = result.history[0], result.history[-1]
    task = ImageTask(cfg).heldout()
    ep = task.sample(128, torch.Generator().manual_seed(5))
    cue_only = float(((ep.cue - ep.target) ** 2)[ep.erased].mean())
    assert last["eval/erased_loss"] < 0.6 * cue_only, (last, cue_only)
    assert last["eval/loss"] < first["eval/loss"]


def test_evaluate_scores_the_folder_the_user_points_at(tmp_path, monkeypatch, capsys, generated_data):
    """`evaluate --data-dir` (or $PLASTICITY_DATA) scores that folder's images, says which
    folder it used, and the test split needs only test_batch."""
    from plasticity.cli import main
    from tests.datagen import write_cifar

    cfg = small(image_size=8, num_cycles=1, present_steps=2, gap_steps=1, episodes=32, batch_size=16,
                eval_every=32, eval_episodes=16, save_every=32, out=str(tmp_path / "runs"),
                data_dir=str(generated_data))
    ckpt = train(cfg, progress=False).checkpoint
    mine = tmp_path / "mine"
    write_cifar(mine, per_batch=12, style="py3-str-p5", files=("test_batch",))
    assert main(["evaluate", str(ckpt), "--episodes", "16", "--data-dir", str(mine)]) == 0
    out = capsys.readouterr().out
    assert f"data: {mine.resolve()} (from --data-dir)" in out and "erased_loss" in out
    monkeypatch.setenv("PLASTICITY_DATA", str(mine))
    assert main(["evaluate", str(ckpt), "--episodes", "16"]) == 0
    assert f"data: {mine.resolve()} (from $PLASTICITY_DATA)" in capsys.readouterr().out
    monkeypatch.delenv("PLASTICITY_DATA")
    assert main(["evaluate", str(ckpt), "--episodes", "16"]) == 0
    assert f"data: {generated_data.resolve()} (from the checkpoint)" in capsys.readouterr().out
