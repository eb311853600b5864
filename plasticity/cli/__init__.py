"""The `plasticity` command line: one module per command, dispatched from here.

    plasticity train patterns --preset small          train one model (MLflow-tracked)
    plasticity evaluate runs/<run>/checkpoint.pt      score a checkpoint on fresh episodes
    plasticity data download cifar10 --data-dir DIR   fetch a dataset (checksums verified, resumable)
    plasticity sweep --task patterns ...              Ray Tune + Optuna sweep (needs [sweep])
    plasticity serve models:/plasticity-patterns/1    live sessions over HTTP (needs [serve])
    plasticity plugins                                the plugins loaded and what they registered

    train.py      `plasticity train`: the run options, parsing TASK's flags, the run
    evaluate.py   `plasticity evaluate`: score a checkpoint, write its figure
    data.py       `plasticity data download|check`
    sweep.py      `plasticity sweep`: hands over to `tune.sweep` (the sweep extras)
    serve.py      `plasticity serve`: hands over to `plasticity.serving.cli` (the serve extras)
    plugins.py    `plasticity plugins`
    usage.py      the usage text

Every flag comes from the config dataclasses (`plasticity.config`), parsed by tyro
(`plasticity.cliargs`, shared with the sweep and `serve`); `--help` on any command lists
them with their documentation. Usage errors and bad input print one line and exit with
status 2. Plugins (`plasticity.plugins`: entry points, $PLASTICITY_PLUGINS, `--plugin MODULE`)
are loaded first, so their tasks and rules are in every command's choices and help.
`python -m plasticity.cli` runs `main`; so does the `plasticity` script.

May import: plasticity.cliargs, plasticity.config, plasticity.errors, plasticity.plugins, plasticity.redact,
    plasticity.train, tyro
"""

from __future__ import annotations

import os
import sys

from plasticity.cli.data import cmd_data
from plasticity.cli.evaluate import cmd_evaluate
from plasticity.cli.plugins import cmd_plugins
from plasticity.cli.serve import cmd_serve
from plasticity.cli.sweep import cmd_sweep
from plasticity.cli.train import RunOptions, cmd_train, resume_command
from plasticity.cli.usage import usage
from plasticity.cliargs import fail
from plasticity.errors import PlasticityError
from plasticity.plugins import PluginError, load_command_line
from plasticity.train.signals import Stopped

__all__ = ["COMMANDS", "RunOptions", "main", "resume_command"]


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "data": cmd_data, "sweep": cmd_sweep, "serve": cmd_serve,
            "plugins": cmd_plugins}


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`plasticity train --help | head`): stop quietly, as Unix
        # tools do, without a second error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = load_command_line(argv)
    except PluginError as e:
        fail(str(e))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)} (see plasticity --help)")
    try:
        return COMMANDS[argv[0]](argv[1:])
    except PlasticityError as e:
        fail(str(e), e.exit_code)
    except Stopped as e:
        print(f"plasticity: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("plasticity: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except OSError as e:
        # Backstop for a file that cannot be read or written where no check named it.
        where = f" ({e.filename})" if e.filename else ""
        fail(f"{e.strerror or e}{where}: check the path, its permissions and the free disk space", 1)
    except MemoryError:
        fail("out of memory: lower the model sizes or --batch-size", 1)
    return 0
