"""The `plasticity` usage text, printed by `plasticity --help` and `plasticity train --help`
(a module of its own, so that the train command does not import the package that
dispatches to it).
"""

from __future__ import annotations

from plasticity.config import CONFIGS

USAGE = """usage: plasticity COMMAND ...

commands:
  train TASK     train one model; TASK is one of: {tasks}
  evaluate CKPT  score a checkpoint on fresh held-out episodes and draw its figure
  data ACTION    `download cifar10|omniglot|omniglot-small` or `check cifar10|omniglot` (--data-dir DIR)
  sweep          hyperparameter sweep with Ray Tune + Optuna (pip install 'plasticity[sweep]')
  serve MODEL    live sessions of a trained network over HTTP, with Ray Serve (pip install 'plasticity[serve]')
  plugins        the plugins loaded (your own tasks, rules and search spaces) and what each registered

Plugins: installed packages' `plasticity.plugins` entry points, $PLASTICITY_PLUGINS=mod1,mod2 and
`--plugin MODULE` (repeatable, anywhere on the line) are loaded before the line is parsed.

Run `plasticity COMMAND --help` for the flags of a command."""


def usage() -> str:
    """The usage text, naming the registered tasks."""
    return USAGE.format(tasks=", ".join(CONFIGS))
