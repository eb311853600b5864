"""Search spaces: define-by-run Optuna functions built from a list of parameter specs.

A space is a mapping `name -> spec`, written in Python (`SPACES`) or in a YAML file
(`--space FILE`), with specs like

    eta:        {type: float, low: 0.001, high: 0.5, log: true}
    rule:       {type: categorical, choices: [hebb, oja]}
    use_clip:   {type: categorical, choices: [false, true]}
    clip:       {type: float, low: 0.5, high: 2.0, when: {use_clip: true}}

A categorical parameter over a config field with fixed choices (a `Literal` such as
`alpha_mode`, or a switch) may leave out `choices`: it then draws from all of them, as
the config defines them. `when` makes a parameter conditional: it is drawn only if every named parameter was
drawn with one of the given values (a value or a list of values). Names are config
fields (the `plasticity train` flags, underscores for dashes); names starting with
`use_` are switches that only gate other parameters and are not passed to training.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from plasticity.config import CONFIGS, PRESETS, field_choices
from plasticity.config.limits import field_types
from plasticity.errors import ConfigError, error_line
from plasticity.rules import RULES, rule_names

SWITCH_PREFIX = "use_"
TYPES = ("float", "int", "categorical")


def plain_rules(first: str | None = None) -> list[str]:
    """The rules a network without a neuromodulator runs (`modulated` false in the rule
    registry), in registration order; `first`, if given, moved to the front."""
    names = list(rule_names(modulated=False))
    if first is not None:
        names.remove(first)  # a ValueError at import if `first` is not one of them
        names.insert(0, first)
    return names


def modulated_models(task: str) -> list[str]:
    """The task's models that are named after a neuromodulated rule: networks that emit the
    modulatory signal their rule needs (the maze's `neuromod`, `retroactive`)."""
    return [m for m in CONFIGS[task].models() if m in RULES and RULES[m].modulated]


# Rule and model choices are read from the rule registry (a rule registered before this
# module is imported is searched wherever it can run), in the order each space was first
# written: Optuna refuses to go on with a study (--resume) whose choices changed, order
# included.
SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "patterns": {
        "rule": {"type": "categorical", "choices": plain_rules()},
        "eta": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
        "alpha_mode": {"type": "categorical"},
        "eta_mode": {"type": "categorical"},
        "extra_neurons": {"type": "int", "low": 0, "high": 32},
        "lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
        # eta's own learning rate (an Adam step changes eta by about eta_lr x eta, relative to eta).
        "eta_lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "use_clip": {"type": "categorical", "choices": [False, True]},
        "clip": {"type": "float", "low": 0.5, "high": 2.0, "when": {"use_clip": True}},
    },
    "images": {
        "rule": {"type": "categorical", "choices": plain_rules()},
        "eta": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
        "alpha_mode": {"type": "categorical"},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "use_clip": {"type": "categorical", "choices": [False, True]},
        "clip": {"type": "float", "low": 0.5, "high": 2.0, "when": {"use_clip": True}},
    },
    "omniglot": {
        # The paper's rule (the config's default) first.
        "rule": {"type": "categorical", "choices": plain_rules(first=CONFIGS["omniglot"].rule)},
        # Below 1: a learned eta is a sigmoid, which never reaches 1.
        "eta": {"type": "float", "low": 1e-2, "high": 0.99, "log": True},
        "learn_eta": {"type": "categorical"},
        "eta_lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True, "when": {"learn_eta": True}},
        "alpha_mode": {"type": "categorical"},
        "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "channels": {"type": "categorical", "choices": [32, 64]},
    },
    # Maze trials report eval/loss = -(mean held-out return per episode), the default objective.
    "maze": {
        # The plastic network and the neuromodulated ones (not the non-plastic baseline `rnn`).
        "model": {"type": "categorical", "choices": ["plastic", *modulated_models("maze")]},
        "rule": {"type": "categorical", "choices": plain_rules(), "when": {"model": "plastic"}},
        "modulation": {"type": "categorical", "when": {"model": modulated_models("maze")}},
        "eta": {"type": "float", "low": 0.01, "high": 0.9, "log": True},
        "alpha_mode": {"type": "categorical"},
        "lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
        "entropy_weight": {"type": "float", "low": 0.003, "high": 0.1, "log": True},
        "value_weight": {"type": "float", "low": 0.03, "high": 0.3, "log": True},
    },
}


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a YAML space file; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file {path} not found: pass a YAML file (see tune/spaces.py)")
    try:
        space = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"search space file {path} is not UTF-8 text ({e.reason} at byte {e.start}): pass a YAML "
                          "file saved as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read search space file {path} ({e.strerror or e}): check its permissions") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"search space file {path} is not valid YAML ({error_line(e)}): fix it") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"search space file {path} must map parameter names to specs")
    return space


def validate_space(space: dict[str, dict[str, Any]], task: str) -> dict[str, dict[str, Any]]:
    """Check every spec against the task's config; raise one `ConfigError` naming the fix.
    Returns the space with the choices of categorical fields that left them out filled in."""
    config_cls = CONFIGS[task]
    names = {f.name: f for f in fields(config_cls)}
    odd = [name for name in space if not isinstance(name, str)]
    if odd:
        raise ConfigError(f"search space parameter {odd[0]!r} is not a name: use config field names such as eta")
    space = {name: _with_choices(config_cls, names, name, spec) for name, spec in space.items()}
    seen: set[str] = set()
    for name, spec in space.items():
        where = f"search space parameter {name!r}"
        if not name.startswith(SWITCH_PREFIX) and name not in names:
            raise ConfigError(f"{where} is not a {task} config field: use one of {', '.join(sorted(names))}")
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise ConfigError(f"{where} needs type: one of {', '.join(TYPES)}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"{where} needs a non-empty list of choices")
            odd = [c for c in spec["choices"] if not isinstance(c, SCALARS)]
            if odd:
                raise ConfigError(f"{where} has a choice {odd[0]!r} that is not a single value: list numbers, "
                                  "strings, true/false or null")
        else:
            _check_range(where, spec)
        extra = set(spec) - {"type", "low", "high", "log", "step", "choices", "when"}
        if extra:
            raise ConfigError(f"{where} has unknown keys {sorted(extra)}: "
                              "use type, low, high, log, step, choices, when")
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise ConfigError(f"{where} has when: {when!r}: write a mapping of earlier parameters to the values "
                              "that activate it, e.g. when: {use_clip: true}")
        for other in when:
            if other not in seen:
                raise ConfigError(f"{where} depends on {other!r}, which must be defined before it")
        seen.add(name)
    return space


SCALARS = (str, int, float, bool, type(None))
"""What a categorical choice may be (what Optuna stores)."""


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(where: str, spec: dict[str, Any]) -> None:
    """A float or int spec: numbers low < high (integers for an int), `log` true or
    false, a positive `step` (not with `log`: Optuna refuses the pair)."""
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    if not _is_number(low) or not _is_number(high) or not low < high:
        raise ConfigError(f"{where} needs numbers low < high, got low={low!r} high={high!r}")
    if spec["type"] == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where} is an int parameter: low and high must be integers, got low={low!r} high={high!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where} has log: {log!r}: write log: true or log: false")
    if log and low <= 0:
        raise ConfigError(f"{where} is log-scaled, so low must be > 0 (got {low})")
    if step is not None:
        if not _is_number(step) or step <= 0 or (spec["type"] == "int" and not isinstance(step, int)):
            kind = "a positive integer" if spec["type"] == "int" else "a positive number"
            raise ConfigError(f"{where} has step: {step!r}: pass {kind}")
        if log:
            raise ConfigError(f"{where} has both log: true and a step, which Optuna cannot draw: drop one")


def _with_choices(config_cls, names: dict, name: str, spec):
    """`spec` with `choices` from the config field's `Literal` (or [False, True] for a
    switch) when a categorical spec leaves them out."""
    if not isinstance(spec, dict) or spec.get("type") != "categorical" or "choices" in spec:
        return spec
    if name in names and field_types(config_cls)[name] is bool:
        return {**spec, "choices": [False, True]}
    choices = field_choices(config_cls, name) if name in names else None
    return {**spec, "choices": list(choices)} if choices else spec


def _active(spec: dict[str, Any], drawn: dict[str, Any]) -> bool:
    for other, allowed in (spec.get("when") or {}).items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if other not in drawn or drawn[other] not in allowed:
            return False
    return True


class DefineByRun:
    """An Optuna define-by-run function: draws the active parameters and returns the
    trial's full set of constants (`constants` plus the drawn values, switches removed).
    A class rather than a closure so that Tune can pickle the searcher with it."""

    def __init__(self, space: dict[str, dict[str, Any]], constants: dict[str, Any]):
        self.space, self.constants = space, dict(constants)

    def __call__(self, trial) -> dict[str, Any]:
        drawn: dict[str, Any] = {}
        for name, spec in self.space.items():
            if _active(spec, drawn):
                drawn[name] = _suggest(trial, name, spec)
        params = {k: v for k, v in drawn.items() if not k.startswith(SWITCH_PREFIX)}
        return {**self.constants, **params}


def _suggest(trial, name: str, spec: dict[str, Any]):
    kind = spec["type"]
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                 log=bool(spec.get("log")))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                               step=spec.get("step"))


def check_constants(task: str, preset_name: str, overrides: dict[str, Any]) -> None:
    """Fail before any trial starts if the fixed part of the config is invalid."""
    from plasticity.config import preset

    if preset_name not in PRESETS[task]:
        raise ConfigError(f"unknown {task} preset {preset_name!r}: choose one of {', '.join(PRESETS[task])}")
    from plasticity.train import preflight

    preflight(preset(task, preset_name, **overrides))


def _gates(space: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Values of the parameters that `name` depends on (`when`), transitively: the first
    allowed value of each, so that `name` is drawn."""
    out: dict[str, Any] = {}
    for other, allowed in (space[name].get("when") or {}).items():
        if other in space:
            out.update(_gates(space, other))
        out[other] = allowed[0] if isinstance(allowed, list) else allowed
    return out


def check_space_limits(space: dict[str, dict[str, Any]], task: str, preset_name: str,
                       overrides: dict[str, Any]) -> None:
    """Refuse a space that can draw a value a trial's config rejects, before any trial
    runs: every choice and both ends of every range, each with the preset and the fixed
    values (and the switches it depends on). Raises one `ConfigError` naming the parameter,
    the value and the config's limit."""
    from plasticity.config import preset

    space = validate_space(space, task)
    for name, spec in space.items():
        if name.startswith(SWITCH_PREFIX):
            continue
        values = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
        gates = {k: v for k, v in _gates(space, name).items() if not k.startswith(SWITCH_PREFIX)}
        for value in values:
            if spec["type"] == "int":
                value = int(value)
            try:
                preset(task, preset_name, **{**overrides, **gates, name: value})
            except ConfigError as e:
                where = "" if spec["type"] == "categorical" else (" (low)" if value == spec["low"] else " (high)")
                raise ConfigError(f"search space parameter {name!r} can draw {value!r}{where}, which a trial "
                                  f"refuses: {e}") from None
