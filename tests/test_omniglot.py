"""The Omniglot one-shot task: splits without leakage, episode construction, the model,
checkpointed splits, and learning on the shared minimal sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plasticity.cli import main
from plasticity.config import preset
from plasticity.data import DataError, OmniglotSet
from plasticity.errors import CheckpointError, ConfigError
from plasticity.models import OmniglotNet, count_parameters
from plasticity.tasks.omniglot import OmniglotTask, rotate, split_characters
from plasticity.train import train
from tests.conftest import SHARED_DATA, needs_shared_data


@pytest.fixture(autouse=True)
def data_env(tmp_path, monkeypatch, generated_data):
    # Generated files in the standard layout (tests/datagen.py); the tests marked
    # needs_shared_data point PLASTICITY_DATA at the real ones.
    monkeypatch.setenv("PLASTICITY_DATA", str(generated_data))
    monkeypatch.setenv("PLASTICITY_CACHE", str(tmp_path / "cache"))


def coded_set(n_chars: int = 40, depth: int = 6) -> OmniglotSet:
    """Synthetic characters whose pixels encode (character, drawing) and that look the
    same under rotation, so episodes can be decoded exactly."""
    images = np.zeros((n_chars, depth, 31, 31), np.float32)
    for c in range(n_chars):
        for d in range(depth):
            images[c, d] = c * 100 + d + 1
    names = [f"Alpha{c % 4}/character{c:02d}" for c in range(n_chars)]
    return OmniglotSet(images, names, ["images_background_small1"] * n_chars)


def decode(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    value = images[..., 0, 15, 15].round().long() - 1
    return value // 100, value % 100  # character, drawing


def test_split_is_seeded_disjoint_and_complete():
    data = coded_set(100)
    a = split_characters(data, "random", 0, 0.1, 0.2)
    assert a == split_characters(data, "random", 0, 0.1, 0.2)
    assert a != split_characters(data, "random", 1, 0.1, 0.2)
    assert [len(a[k]) for k in ("train", "validation", "test")] == [70, 10, 20]
    assert sorted(a["train"] + a["validation"] + a["test"]) == sorted(data.names)


def test_paper_split_needs_the_full_sets():
    with pytest.raises(DataError, match="images_background.zip and images_evaluation.zip"):
        split_characters(coded_set(), "paper", 0, 0.1, 0.2)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_episodes_never_leave_their_split(split):
    cfg = preset("omniglot", "small")
    task = OmniglotTask(cfg, data=coded_set(60)).for_split(split)
    allowed = {int(n[-2:]) for n in task.splits[split]}
    ep = task.sample(200, torch.Generator().manual_seed(0))
    chars, _ = decode(ep.images)
    assert set(chars.unique().tolist()) <= allowed


def test_episode_structure_and_answer():
    cfg = preset("omniglot", "small")
    task = OmniglotTask(cfg, data=coded_set(60))
    ep = task.sample(300, torch.Generator().manual_seed(0))
    assert ep.images.shape == (300, 6, 1, 31, 31) and ep.labels.shape == (300, 6, 5)
    chars, drawings = decode(ep.images)
    for b in range(300):
        assert len(set(chars[b, :5].tolist())) == 5  # five different characters
        labels = ep.labels[b, :5].argmax(-1)
        assert sorted(labels.tolist()) == [0, 1, 2, 3, 4] and (ep.labels[b, 5] == 0).all()
        shown = (labels == ep.target[b]).nonzero().item()
        # The query is another drawing of the character shown under the target label.
        assert chars[b, 5] == chars[b, shown] and drawings[b, 5] != drawings[b, shown]
    # Targets and labels are balanced over classes (no position or label shortcut).
    assert torch.bincount(ep.target, minlength=5).min() > 30


def test_rotation_is_per_class_and_shared_by_the_query():
    img = torch.arange(31 * 31, dtype=torch.float32).reshape(31, 31)
    batch = img.expand(2, 3, 31, 31).clone()
    out = rotate(batch, torch.tensor([[0, 1, 2], [3, 0, 1]]))
    assert torch.equal(out[0, 1], torch.rot90(img, 1)) and torch.equal(out[1, 0], torch.rot90(img, 3))
    assert torch.equal(out[0, 0], img)
    task = OmniglotTask(preset("omniglot", "small"))
    ep = task.sample(64, torch.Generator().manual_seed(3))
    assert ep.images.shape[-2:] == (31, 31)


def test_split_and_runs_on_files_in_the_standard_layout():
    task = OmniglotTask(preset("omniglot", "small"))
    assert sum(len(v) for v in task.splits.values()) == 24  # tests/datagen.py: 3 alphabets x 8 characters
    ep = task.for_split("runs").sample(8, torch.Generator().manual_seed(0))
    assert ep.images.shape == (8, 6, 1, 31, 31)


@needs_shared_data
def test_real_split_and_official_runs(monkeypatch):
    monkeypatch.setenv("PLASTICITY_DATA", str(SHARED_DATA))
    task = OmniglotTask(preset("omniglot", "small"))
    sizes = {k: len(v) for k, v in task.splits.items()}
    assert sizes == {"train": 170, "validation": 24, "test": 48}  # 242 characters, random split
    runs = task.for_split("runs")
    ep = runs.sample(64, torch.Generator().manual_seed(0))
    assert ep.images.shape == (64, 6, 1, 31, 31)
    with pytest.raises(DataError, match="unknown split"):
        task.for_split("nope")


def test_model_shape_and_parameter_count():
    cfg = preset("omniglot", "small")
    net = OmniglotNet(cfg)
    # 4 conv layers of 64 channels (~112k parameters, as the paper says) + w, alpha (64x5) and eta.
    assert count_parameters(net) == 1 * 64 * 9 + 64 + 3 * (64 * 64 * 9 + 64) + 2 * 64 * 5 + 1
    ep = OmniglotTask(cfg).sample(4, torch.Generator().manual_seed(0))
    probs, traces = net((ep.images, ep.labels))
    assert probs.shape == (4, 6, 5) and torch.allclose(probs.sum(-1), torch.ones(4, 6))
    # On presentation steps the label drives the output to the one-hot class.
    assert torch.allclose(probs[:, :5], ep.labels[:, :5], atol=1e-4)
    assert traces[0].shape == (4, 64, 5)


def test_bad_config_is_one_line():
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction"):
        preset("omniglot", "small", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="model"):
        preset("omniglot", "small", model="lstm")


@pytest.mark.slow
@needs_shared_data
def test_learns_one_shot_on_held_out_characters_and_evaluates(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PLASTICITY_DATA", str(SHARED_DATA))
    cfg = preset("omniglot", "small", episodes=16_000, eval_every=8000, eval_episodes=512, save_every=8000,
                 out=str(tmp_path), seed=0)
    result = train(cfg, progress=False)
    assert result.final["eval/accuracy"] > 0.4, result.history  # chance is 0.2
    ckpt = result.checkpoint
    assert main(["evaluate", str(ckpt), "--episodes", "1000"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("accuracy: ")[1].split()[0])
    ci = float(out.split("accuracy_ci95: ")[1].split()[0])
    assert acc > 0.35 and 0.01 < ci < 0.04
    assert main(["evaluate", str(ckpt), "--episodes", "200", "--split", "runs"]) == 0
    # The checkpoint stores the split; other data (another split seed) is refused.
    import plasticity.tasks.omniglot as om

    saved = torch.load(ckpt, weights_only=True)["task_state"]["splits"]
    assert saved == OmniglotTask(cfg).splits
    other = OmniglotTask(cfg.replace(split_seed=1))
    with pytest.raises(CheckpointError, match="different Omniglot character split"):
        other.check_state({"splits": saved}, str(ckpt))
    assert om.check_disjoint(saved) is None
