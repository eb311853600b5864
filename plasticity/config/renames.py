"""Config names that changed, and how the old ones are still accepted.

Checkpoints, sweep results and MLflow params written before a rename keep loading
(`upgrade_dict`, silent); old flags and values on a command line still work with one
deprecation line on stderr (`upgrade_argv`).
"""

from __future__ import annotations

from typing import Any

RENAMED_FIELDS = {
    "checkpoint_every": "save_every",
    "checkpoint_minutes": "save_minutes",
    "recompute_every": "segment_steps",
}
"""Old field name -> new one."""

RENAMED_VALUES = {
    "alpha_mode": {"yoked": "shared"},
    "impl": {"plain": "autograd"},
}
"""Field -> old value -> new one."""


def upgrade_value(name: str, value: Any) -> Any:
    """`value` of field `name`, with an old spelling replaced by the new one."""
    old = RENAMED_VALUES.get(name, {})
    return old.get(value, value) if isinstance(value, str) else value


def upgrade_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict with old field names and values replaced by the current ones."""
    out = {}
    for key, value in data.items():
        key = RENAMED_FIELDS.get(key, key)
        out[key] = upgrade_value(key, value)
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def upgrade_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv with old flags and values replaced, one deprecation notice per replacement)."""
    flags = {_flag(old): _flag(new) for old, new in RENAMED_FIELDS.items()}
    values = {_flag(name): table for name, table in RENAMED_VALUES.items()}
    out, notices = [], []
    pending = None  # the values table of the flag just seen, when its value is the next word
    for arg in argv:
        if pending is not None:
            flag, table = pending
            if arg in table:
                notices.append(f"{flag} {arg} is deprecated: use {flag} {table[arg]}")
                arg = table[arg]
            pending = None
            out.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name in flags:
            notices.append(f"{name} is deprecated: use {flags[name]}")
            name = flags[name]
        if name in values:
            if eq and value in values[name]:
                notices.append(f"{name} {value} is deprecated: use {name} {values[name][value]}")
                value = values[name][value]
            elif not eq:
                pending = (name, values[name])
        out.append(name + eq + value)
    return out, notices


def deprecated_value(name: str, value: Any) -> Any:
    """`upgrade_value` for library calls: an old value works, with a `DeprecationWarning`."""
    new = upgrade_value(name, value)
    if new != value:
        import warnings

        warnings.warn(f"{name}={value!r} is deprecated: use {name}={new!r}", DeprecationWarning, stacklevel=3)
    return new
