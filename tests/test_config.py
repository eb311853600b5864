"""The config package: limits written once (as field types) and read by validation, the
CLI and the sweep spaces; old names still accepted; the task hooks. (The import layering:
tests/test_import_layers.py.)"""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from plasticity.config import CONFIGS, PRESETS, PatternsConfig, field_choices, field_range, preset
from plasticity.config.renames import upgrade_argv, upgrade_dict
from plasticity.errors import ConfigError, error_line
from plasticity.nn import PlasticRNN, PlasticWeights
from plasticity.tasks import TASKS, make_task
from tests.test_cli import one_error_line, run


def test_every_task_is_registered_once_with_presets_and_a_task():
    assert set(CONFIGS) == set(PRESETS) == set(TASKS) == {"patterns", "images", "omniglot", "maze"}
    for name, cls in CONFIGS.items():
        assert cls().task == name and PRESETS[name]
        for preset_name, values in PRESETS[name].items():
            assert set(values) <= {f.name for f in dataclasses.fields(cls)}, (name, preset_name)


def test_limits_are_read_from_the_field_types():
    assert field_range(PatternsConfig, "pattern_size").describe() == "> 0"
    assert field_range(PatternsConfig, "gap_steps").describe() == ">= 0"
    assert field_range(PatternsConfig, "erase_fraction").describe() == "in (0, 1)"
    assert field_range(PatternsConfig, "balanced") is None
    assert field_choices(PatternsConfig, "alpha_mode") == ("free", "shared")
    assert CONFIGS["maze"].models() == ("plastic", "rnn", "neuromod", "retroactive")
    assert CONFIGS["omniglot"].models() == ("plastic",)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_patterns=0), "num_patterns must be > 0, got 0"),
    (dict(gap_steps=-1), "gap_steps must be >= 0, got -1"),
    (dict(erase_fraction=0.0), r"erase_fraction must be in \(0, 1\), got 0.0"),
    (dict(clip=-1.0), "clip must be > 0"),
    (dict(eta_mode="per-neuron"), "unknown eta mode 'per-neuron': choose one of scalar, per-connection"),
    (dict(impl="fast"), "unknown impl 'fast': choose one of fused, autograd"),
])
def test_validation_names_the_field_and_its_limit(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preset("patterns", "small", **overrides)


def test_a_value_at_the_limit_is_accepted():
    cfg = preset("patterns", "small", gap_steps=0, clip=None, extra_neurons=0)
    assert cfg.gap_steps == 0
    with pytest.raises(ConfigError, match="extra_neurons must be 0, got 2"):
        preset("maze", "small", extra_neurons=2)


def test_old_field_names_and_values_in_a_checkpoint_config_still_load():
    old = preset("patterns", "small").to_dict()
    old["checkpoint_every"] = old.pop("save_every")
    old["checkpoint_minutes"] = old.pop("save_minutes")
    old["recompute_every"] = old.pop("segment_steps")
    old.update(alpha_mode="yoked", impl="plain")
    cfg = PatternsConfig.from_dict(old)
    small = PRESETS["patterns"]["small"]
    assert (cfg.alpha_mode, cfg.impl, cfg.save_every) == ("shared", "autograd", small["save_every"])
    assert upgrade_dict({"rule": "hebb"}) == {"rule": "hebb"}


def test_old_flags_are_replaced_with_one_notice_each():
    argv, notices = upgrade_argv(["--checkpoint-every", "5", "--alpha-mode", "yoked", "--impl=plain",
                                  "--recompute-every=3", "--rule", "oja"])
    assert argv == ["--save-every", "5", "--alpha-mode", "shared", "--impl=autograd", "--segment-steps=3",
                    "--rule", "oja"]
    assert notices == ["--checkpoint-every is deprecated: use --save-every",
                       "--alpha-mode yoked is deprecated: use --alpha-mode shared",
                       "--impl plain is deprecated: use --impl autograd",
                       "--recompute-every is deprecated: use --segment-steps"]


def test_old_flag_values_on_the_command_line_train_with_a_deprecation_line(tmp_path):
    proc = run(["train", "patterns", "--preset", "small", "--episodes", "64", "--batch-size", "32",
                "--eval-every", "64", "--eval-episodes", "32", "--checkpoint-every", "64", "--alpha-mode", "yoked",
                "--no-tracking", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "plasticity: warning: --alpha-mode yoked is deprecated: use --alpha-mode shared" in proc.stderr
    assert "plasticity: warning: --checkpoint-every is deprecated: use --save-every" in proc.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["alpha_mode"] == "shared"


def test_a_bad_value_of_a_renamed_field_is_one_line(tmp_path):
    line = one_error_line(run(["train", "patterns", "--alpha-mode", "tied"], tmp_path))
    assert "--alpha-mode" in line and "shared" in line


def test_old_layer_arguments_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="alpha_mode='yoked' is deprecated"):
        net = PlasticRNN(4, alpha_mode="yoked", impl="autograd")
    assert net.plastic.alpha.shape == ()
    with pytest.warns(DeprecationWarning, match="impl='plain' is deprecated"):
        assert not PlasticRNN(4, impl="plain").fused
    with pytest.warns(DeprecationWarning, match="checkpoint_every is deprecated"):
        assert PlasticRNN(4, checkpoint_every=3).segment_steps == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PlasticRNN(4, alpha_mode="shared", segment_steps=2)


def test_layer_options_are_read_from_a_config_once():
    cfg = preset("patterns", "small", rule="oja", eta=0.2, alpha_mode="shared", clip=0.5, learn_eta=False)
    options = PlasticWeights.options(cfg)
    assert options == dict(rule="oja", eta=0.2, eta_mode="scalar", learn_eta=False, alpha_mode="shared", clip=0.5,
                           init_std=cfg.init_std)
    layer = make_task(cfg).build_model(cfg).core.plastic
    assert layer.rule.name == "oja" and layer.clip == 0.5 and not layer.eta_logit.requires_grad
    assert abs(float(layer.eta) - 0.2) < 1e-6 and layer.alpha.shape == ()


def test_tasks_without_data_refuse_other_splits_and_the_maze_is_a_task():
    for task in ("patterns", "maze"):
        cfg = preset(task, "small")
        assert make_task(cfg, "test").for_split("test") is not None
        with pytest.raises(ConfigError, match=f"the {task} task has no data splits"):
            make_task(cfg, "validation")
    maze = make_task(preset("maze", "small", model="neuromod"))
    agent = maze.build_model(maze.cfg)
    logits, value, _ = agent(torch.zeros(2, maze.spec.obs_size))
    assert logits.shape == (2, 4) and value.shape == (2,)
    assert [len(layout.goal) for layout in maze.heldout_layouts(300, seed=1)] == [128, 128, 44]


def test_error_line_quotes_one_line():
    assert error_line(ValueError("first\nsecond")) == "first"
    assert error_line("Traceback...\n  File x\nKeyError: 'a'", last=True) == "KeyError: 'a'"
    assert error_line(RuntimeError()) == "RuntimeError"
    assert error_line(ValueError("x" * 500), limit=10) == "x" * 10


def test_the_sweep_knows_every_registered_task():
    from tune.spaces import SPACES, validate_space
    from tune.sweep import args_type

    assert set(SPACES) == set(CONFIGS)
    # --task's choices are read from the registry when the command line is parsed (plugins loaded).
    assert field_choices(args_type(), "task") == tuple(CONFIGS)
    # A categorical spec without choices draws from the config field's own.
    space = validate_space({"alpha_mode": {"type": "categorical"}, "learn_eta": {"type": "categorical"}}, "patterns")
    assert space["alpha_mode"]["choices"] == ["free", "shared"] and space["learn_eta"]["choices"] == [False, True]
