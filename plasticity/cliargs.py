"""Parsing a command's flags with tyro, the way every `plasticity` command does: a usage
error is one line on stderr and exit status 2 (`--help` stays tyro's own page).

    args = parse_args(EvaluateArgs, argv, prog="plasticity evaluate")
    fail("unknown task 'x': choose one of ...")          # prints one line, exits 2

Shared by the `plasticity` commands (`plasticity.cli`), `plasticity serve`
(`plasticity.serving.cli`) and the sweep (`tune.sweep`), which is why it is a module of
its own: the sweep imports it, not the CLI that dispatches to the sweep.

May import: plasticity.redact, tyro
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import fields

import tyro

from plasticity.redact import redact


def fail(message: str, code: int = 2) -> None:
    """Print `plasticity: error: MESSAGE` (passwords masked) and exit with `code`."""
    print(f"plasticity: error: {redact(message)}", file=sys.stderr)
    raise SystemExit(code)


def _tyro_message(text: str) -> str:
    """The message of one of tyro's error boxes (title, rule, message lines, rule, ...)."""
    lines = [line.strip(" │╭╮╰╯") for line in text.splitlines()]
    lines = [line.strip() for line in lines if line.strip()]
    rule = [i for i, line in enumerate(lines) if set(line) <= set("-─")]
    if len(rule) >= 2:
        return " ".join(lines[rule[0] + 1:rule[1]])
    return lines[0] if lines else "could not parse the arguments"


def parse_args(cls, argv: list[str], prog: str, **kwargs):
    """`tyro.cli(cls)`, with a parse error printed as one line (`--help` stays tyro's)."""
    if any(a in ("-h", "--help") for a in argv):
        return tyro.cli(cls, args=argv, prog=prog, **kwargs)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return tyro.cli(cls, args=argv, prog=prog, **kwargs)
    except SystemExit as e:
        if e.code in (0, None):
            print(captured.getvalue(), end="")
            raise
        fail(f"{_tyro_message(captured.getvalue())} (see {prog} --help)")


def given_fields(argv: list[str], cls) -> set[str]:
    """Names of the fields of dataclass `cls` whose flags appear in `argv`
    (`--batch-size 8`, `--batch-size=8`, `--no-learn-eta`)."""
    names = {f.name for f in fields(cls)}
    given = set()
    for arg in argv:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in names:
            name = name[3:]
        if name in names:
            given.add(name)
    return given
