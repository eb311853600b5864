"""Search spaces: validation errors, YAML files, conditional parameters (real Optuna)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from plasticity.config import CONFIGS, PRESETS
from plasticity.errors import ConfigError
from plasticity.rules import RULES, rule_names
from tune.spaces import SPACES, DefineByRun, check_space_limits, load_space, plain_rules, validate_space

PLAIN, MODULATED = rule_names(modulated=False), rule_names(modulated=True)
"""The registered rules a plain plastic network runs, and the neuromodulated ones."""


def test_builtin_space_is_valid_and_conditional_clip_follows_its_switch():
    space = validate_space(SPACES["patterns"], "patterns")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggest = DefineByRun(space, {"preset": "small"})
    seen_clip = {True: 0, False: 0}
    for _ in range(40):
        trial = study.ask()
        params = suggest(trial)
        switch = trial.params["use_clip"]
        assert ("clip" in params) == switch
        assert "use_clip" not in params and params["preset"] == "small"
        assert 1e-3 <= params["eta"] <= 0.5 and params["rule"] in PLAIN
        seen_clip[switch] += 1
        study.tell(trial, 0.0)
    assert seen_clip[True] and seen_clip[False]


@pytest.mark.parametrize("space,message", [
    ({"etaa": {"type": "float", "low": 0.1, "high": 0.5}}, "'etaa' is not a patterns config field"),
    ({"eta": {"type": "float", "low": 0.5, "high": 0.1}}, "needs numbers low < high"),
    ({"eta": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "low must be > 0"),
    ({"rule": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
    ({"rule": {"type": "choice", "choices": ["hebb"]}}, "needs type: one of float, int, categorical"),
    ({"clip": {"type": "float", "low": 0.5, "high": 1, "when": {"use_clip": True}}}, "must be defined before it"),
    ({"eta": {"type": "float", "low": 0.1, "high": 0.5, "lgo": True}}, "unknown keys ['lgo']"),
], ids=["field", "bounds", "log", "choices", "type", "order", "key"])
def test_invalid_spaces_are_rejected(space, message):
    with pytest.raises(ConfigError, match=None) as info:
        validate_space(space, "patterns")
    assert message in str(info.value)


def test_yaml_space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("eta: {type: float, low: 0.01, high: 0.1, log: true}\n"
                    f"rule: {{type: categorical, choices: [{PLAIN[-1]}]}}\n")
    space = validate_space(load_space(path), "patterns")
    params = DefineByRun(space, {})(optuna.create_study().ask())
    assert params["rule"] == PLAIN[-1] and 0.01 <= params["eta"] <= 0.1
    (tmp_path / "bad.yaml").write_text("eta: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_space(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "missing.yaml")


def test_builtin_spaces_stay_within_every_presets_limits():
    for task, space in SPACES.items():
        for name in PRESETS[task]:
            check_space_limits(space, task, name, {})


@pytest.mark.parametrize("space,message", [
    ({"eta": {"type": "float", "low": 0.01, "high": 1.5}},
     r"parameter 'eta' can draw 1.5 \(high\), which a trial refuses: eta must be in \(0, 1\]"),
    ({"extra_neurons": {"type": "int", "low": -3, "high": 4}},
     r"parameter 'extra_neurons' can draw -3 \(low\), which a trial refuses: extra_neurons must be >= 0"),
    ({"rule": {"type": "categorical", "choices": [PLAIN[0], MODULATED[0]]}},
     rf"parameter 'rule' can draw '{MODULATED[0]}'"),
    # A conditional parameter is checked with the switch that draws it.
    ({"use_clip": {"type": "categorical", "choices": [False, True]},
      "clip": {"type": "float", "low": 0.0, "high": 2.0, "when": {"use_clip": True}}},
     r"parameter 'clip' can draw 0.0 \(low\), which a trial refuses: clip must be > 0"),
], ids=["eta-high", "int-low", "choice", "conditional"])
def test_space_outside_the_configs_limits_is_refused(space, message):
    with pytest.raises(ConfigError, match=message) as e:
        check_space_limits(validate_space(space, "patterns"), "patterns", "small", {})
    assert "\n" not in str(e.value)


def test_rule_and_model_choices_come_from_the_rule_registry(monkeypatch):
    """Every space searches the rules a plain plastic network runs, and the maze space the
    models that emit a neuromodulated rule's signal; a rule registered later (a user's
    plugin) is a choice of the spaces built after it."""
    for task, space in SPACES.items():
        assert sorted(space["rule"]["choices"]) == sorted(PLAIN), task
    emitting = [m for m in CONFIGS["maze"].models() if m in MODULATED]
    assert SPACES["maze"]["model"]["choices"] == ["plastic", *emitting]
    assert SPACES["maze"]["modulation"]["when"] == {"model": emitting}
    monkeypatch.setitem(RULES, "plugin", dataclasses.replace(RULES[PLAIN[0]], name="plugin"))
    assert plain_rules() == [*PLAIN, "plugin"] and plain_rules(first="plugin") == ["plugin", *PLAIN]
