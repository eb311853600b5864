"""Pattern-task episodes: structure, counts, seeding."""

from __future__ import annotations

import pytest
import torch

from plasticity.config import PRESETS, preset
from plasticity.errors import ConfigError
from plasticity.tasks import PatternTask


def _episode(name="reference", batch=4, seed=0, **kw):
    cfg = preset("patterns", name, **kw)
    task = PatternTask(cfg)
    return cfg, task, task.sample(batch, torch.Generator().manual_seed(seed))


def test_reference_timeline_and_sizes():
    cfg, task, ep = _episode()
    assert task.steps == 106 and task.n_io == 1001
    assert ep.inputs.shape == (4, 106, 1001)
    # bias channel: input 1 x gain 20 at every step
    assert torch.all(ep.inputs[:, :, -1] == 20.0)
    bits = ep.inputs[:, :, :-1] / cfg.input_gain
    period = cfg.present_steps + cfg.gap_steps
    for cycle in range(cfg.num_cycles):
        shown = []
        for k in range(cfg.num_patterns):
            t0 = (cycle * cfg.num_patterns + k) * period
            block = bits[:, t0:t0 + cfg.present_steps]
            assert torch.all(block == block[:, :1]), "a pattern is held for present_steps"
            assert torch.all(bits[:, t0 + cfg.present_steps:t0 + period] == 0), "gap steps are zero"
            shown.append(block[:, 0])
        shown = torch.stack(shown, 1)  # [B, K, P]
        # each cycle shows every stored pattern exactly once
        for b in range(4):
            matches = (shown[b].unsqueeze(1) == ep.patterns[b].unsqueeze(0)).all(-1)
            assert torch.equal(matches.sum(0), torch.ones(cfg.num_patterns, dtype=torch.long))
    test = bits[:, -cfg.test_steps:]
    assert torch.all(test == ep.cue.unsqueeze(1))


def test_patterns_are_balanced_and_cue_erases_exactly_half():
    cfg, _, ep = _episode()
    assert torch.all(ep.patterns.sum(-1) == 0)
    assert torch.all(ep.erased.sum(-1) == 500)
    assert torch.all(ep.cue[ep.erased] == 0)
    assert torch.equal(ep.cue[~ep.erased], ep.target[~ep.erased])
    # the target is one of the stored patterns
    assert torch.all((ep.patterns == ep.target.unsqueeze(1)).all(-1).any(-1))


def test_episodes_are_seeded_and_fresh():
    _, _, a = _episode(seed=1)
    _, _, b = _episode(seed=1)
    _, _, c = _episode(seed=2)
    assert torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name,steps", [("reference", 106), ("paper", 205), ("small", 11)])
def test_presets(name, steps):
    _, task, ep = _episode(name, batch=2)
    assert task.steps == steps
    assert ep.inputs.shape[1] == steps
    assert set(PRESETS["patterns"]) == {"reference", "paper", "small"}


def test_metrics_on_perfect_and_inverted_answers():
    _, task, ep = _episode("small", batch=8)
    perfect = torch.zeros(8, task.steps, task.n_io)
    perfect[:, -1, :task.size] = ep.target
    m = task.metrics(perfect, ep)
    assert m["bit_error_erased"] == 0.0 and m["loss"] == 0.0
    m = task.metrics(-perfect, ep)
    assert m["bit_error_erased"] == 1.0 and m["bit_error_all"] == 1.0


@pytest.mark.parametrize("overrides,message", [
    (dict(pattern_size=0), "pattern_size must be > 0"),
    (dict(pattern_size=51), "balanced patterns need an even pattern_size"),
    (dict(erase_fraction=1.0), "erase_fraction must be in"),
    (dict(gap_steps=-1), "gap_steps must be >= 0"),
])
def test_bad_task_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preset("patterns", "small", **overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown patterns preset 'huge': choose one of reference, paper, small"):
        preset("patterns", "huge")
