"""docker-compose.yml as the one source of the cluster's settings: read it, interpolate
`${VAR}`, `${VAR:-default}`, `${VAR:?error}` like Compose does (environment first, then
the env file), and give each service's command and environment. That interpolation is our
own (`interpolate`): no maintained Python library implements Compose's; the env file
itself is parsed by python-dotenv (`read_env_file`).

The local launcher (`cluster/local.py`) runs these same commands with these same
environments as processes, with the service names resolved to 127.0.0.1 and the
container volumes under its state folder.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dotenv.parser import parse_stream

from plasticity.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def read_env_file(path: Path | str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of a Compose env file (`.env`), parsed by python-dotenv with Compose's rules:
    `KEY=value`, `export KEY=value`, blank lines and `#` comments; an inline comment needs a
    space before its `#` (`KEY=a#b` is `a#b`) or must follow a closing quote. Unquoted and
    double-quoted values are interpolated like Compose (`${VAR}`, `${VAR:-default}`, ...: the
    environment `environ`, default `os.environ`, first, then earlier lines); single-quoted
    ones are literal. A bare `KEY` takes the environment's value, if any. A missing file
    raises FileNotFoundError; a malformed line a one-line ConfigError naming file and line.
    """
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(_env_text(Path(path)))):
        text = binding.original.string
        n = binding.original.line + text[: len(text) - len(text.lstrip())].count("\n")
        line = text.strip().partition("\n")[0]
        if binding.error or (binding.key is not None and not re.fullmatch(r"[\w.]+", binding.key)):
            raise ConfigError(f"{path}:{n}: expected KEY=value, got {line!r}")
        if binding.key is None:  # blank lines and comments
            continue
        if binding.value is None:
            if binding.key in environ:
                env[binding.key] = environ[binding.key]
        elif re.match(r"(?:export\s+)?[^=]*=\s*'", line):
            env[binding.key] = binding.value
        else:
            try:
                env[binding.key] = interpolate(binding.value, {**env, **environ})
            except ConfigError as e:
                raise ConfigError(f"{path}:{n}: {e}") from None
    return env


def _env_text(path: Path) -> str:
    """The text of env file `path`; a file that is not UTF-8 text (a binary file, a
    Windows-1252 editor's accents) or cannot be read is a one-line ConfigError (a missing
    one stays FileNotFoundError)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise  # the callers say which flag or default named it
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not an env file: pass a file of KEY=value lines") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e.strerror or e}): check the path and its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        n = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{n}: not UTF-8 text (byte 0x{data[e.start]:02x}): save the file as UTF-8") from None
    if "\x00" in text:
        n = text.count("\n", 0, text.index("\x00")) + 1
        raise ConfigError(f"{path}:{n}: a NUL byte: this is not a text file; pass a file of KEY=value lines")
    return text


def variables(text: str) -> list[tuple[str, str | None, str | None]]:
    """Every `${VAR...}` in `text`: (name, operator, argument)."""
    return [(m["name"] or m["bare"], m["op"], m["arg"]) for m in _VAR.finditer(text) if m["name"] or m["bare"]]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation on every string in `value` (`$$` is a literal `$`)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m["name"] or m["bare"], m["op"], m["arg"]
        current = env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if unset_or_empty else current
        if op in (":?", "?"):
            if unset_or_empty:
                why = f" ({arg})" if arg else ""
                raise ConfigError(f"{name} is not set{why}: copy .env.example to .env and fill it in")
            return current
        return current or ""

    return _VAR.sub(one, value)


@dataclass
class Service:
    name: str
    command: list[str]
    environment: dict[str, str]
    ports: list[str] = field(default_factory=list)
    replicas: int = 1


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    return yaml.safe_load(Path(path).read_text())


def resolve_env(env_file: Path | str | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables Compose would see: the env file, overridden by the environment."""
    env: dict[str, str] = {}
    path = Path(env_file) if env_file is not None else REPO / ".env"
    if path.is_file():
        env.update(read_env_file(path, environ))
    env.update(os.environ if environ is None else environ)
    return env


def services(env: dict[str, str], path: Path = COMPOSE_FILE) -> dict[str, Service]:
    """Services of the compose file with their interpolated command and environment."""
    compose = load_compose(path)
    out = {}
    for name, spec in compose["services"].items():
        spec = interpolate(spec, env)
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        command = spec.get("command") or []
        command = command.split() if isinstance(command, str) else list(command)
        replicas = int((spec.get("deploy") or {}).get("replicas", 1))
        out[name] = Service(name, command, {k: "" if v is None else str(v) for k, v in environment.items()},
                            [str(p) for p in spec.get("ports") or []], replicas)
    return out
