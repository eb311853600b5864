"""Errors the user can act on.

Every check of user input (configs, shapes, files, servers) raises a subclass of
`PlasticityError`: a `ValueError` whose message names the problem *and* the fix, so
that the CLI can print it as one line and exit with status 2.

May import: nothing
"""

from __future__ import annotations


class PlasticityError(ValueError):
    """A problem with the user's input, with a hint on how to fix it."""

    exit_code = 2
    """What the CLI exits with: 2 for bad input (usage), 1 for a failure at run time."""


class ConfigError(PlasticityError):
    """An invalid configuration value (unknown rule, eta out of range, bad size...)."""


class ShapeError(PlasticityError):
    """Tensors passed to a layer do not have the documented shapes."""


class CheckpointError(PlasticityError):
    """A checkpoint file is missing, truncated, corrupt or not ours."""


class StorageError(PlasticityError):
    """A file or folder cannot be written (permissions, a full disk); nothing was lost."""

    exit_code = 1


class TrackingError(PlasticityError):
    """The experiment tracking server cannot be reached or used."""


def check_choice(name: str, value: str, choices) -> str:
    """Raise a `ConfigError` unless `value` is one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(map(str, choices))}")
    return value


def check_positive(name: str, value, *, allow_zero: bool = False):
    """Raise a `ConfigError` unless `value` is > 0 (or >= 0 with `allow_zero`)."""
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{name} must be {bound}, got {value!r}: pass a {kind} value")
    return value


ETA_MIN = 1e-6
"""Smallest plasticity rate: eta lives in [ETA_MIN, 1] (see `plasticity.nn.plastic.eta_from_logit`)."""


def check_eta(eta: float, *, learned: bool = False) -> float:
    """Raise a `ConfigError` unless the plasticity rate is in (0, 1] (at least `ETA_MIN`),
    and below 1 for a learned eta (a sigmoid of a trained parameter, which never reaches 1)."""
    if not (0.0 < float(eta) <= 1.0):
        raise ConfigError(f"eta must be in (0, 1], got {eta!r}: pass e.g. --eta 0.01")
    if float(eta) < ETA_MIN:
        raise ConfigError(f"eta must be at least {ETA_MIN:g}, got {eta!r}: pass e.g. --eta 0.01")
    if learned and float(eta) == 1.0:
        raise ConfigError("a learned eta must be below 1 (it is a sigmoid of a trained parameter): "
                          "pass e.g. --eta 0.99, or --no-learn-eta to keep eta at 1")
    return float(eta)


def error_line(error: BaseException | str, *, limit: int = 200, last: bool = False) -> str:
    """One line of an error's message to quote inside ours: its first non-empty line (the
    last with `last`, e.g. of a traceback), at most `limit` characters; the exception's
    type name if it has no message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return (lines[-1] if last else lines[0])[:limit]
