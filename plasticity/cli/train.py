"""`plasticity train TASK`: parse the task's config and the run options from the flags,
train (the run's life is `plasticity.train.run`'s), print the summary.

`plasticity.serving` (the model's flavour) and `plasticity.tracking` (the MLflow session)
only inside the function that opens the tracking, when it is on.

May import in functions: plasticity.serving, plasticity.tracking
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from dataclasses import dataclass, fields
from typing import Annotated, Literal

import tyro

from plasticity.cli.usage import usage
from plasticity.cliargs import fail, given_fields, parse_args
from plasticity.config import CONFIGS, PRESETS, preset, validate
from plasticity.config.renames import upgrade_argv
from plasticity.plugins import command_line_plugins
from plasticity.redact import redact
from plasticity.train.signals import SignalPlan, Stopped, WarningSignal


@dataclass
class RunOptions:
    """Options of a training run that are not part of the model's config."""

    tracking: bool = True
    """Log params, metrics, figures and the model to MLflow (--no-tracking to turn off)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; when unset, $MLFLOW_TRACKING_URI or sqlite:///mlruns.db here."""
    experiment: str = "plasticity"
    """MLflow experiment name."""
    resume: str | None = None
    """Continue the run of this checkpoint.pt, in its run folder: everything comes from the
    checkpoint except the flags given again (the schedule: --episodes, --lr, ...)."""
    progress: bool = True
    """Show a progress bar."""
    warning_signal: WarningSignal = "USR1"
    """Signal that warns the run its time is nearly up (Slurm: #SBATCH --signal=B:USR1@120).
    SIGTERM, SIGINT and SIGHUP always stop the run with a checkpoint (exit 143, 130, 129)."""
    on_warning: Literal["stop", "checkpoint"] = "stop"
    """On the warning signal: `stop` writes a checkpoint and exits 128 + its number (138 for
    USR1, 140 for USR2: a requeue script tests it); `checkpoint` writes one and goes on."""

    def signal_plan(self) -> SignalPlan:
        return SignalPlan(self.warning_signal, self.on_warning)


def resume_command(task: str, checkpoint, opts: RunOptions) -> str:
    """The command that continues a stopped run. The checkpoint holds the config, RNG states
    and schedule; the run options are not in it, so those given differently from their
    defaults are repeated (a run trained with --no-tracking goes on without an MLflow run,
    one tracked at --tracking-uri goes on in the same MLflow run; a requeued job keeps its
    --warning-signal and --on-warning; plugins given with --plugin are named again).
    Passwords are masked."""
    parts = ["plasticity", "train", task, "--resume", str(checkpoint)]
    # Plugins the command line loaded (those of entry points and $PLASTICITY_PLUGINS load again by themselves).
    for module in command_line_plugins():
        parts += ["--plugin", module]
    if not opts.tracking:
        parts.append("--no-tracking")
    else:
        if opts.tracking_uri:
            parts += ["--tracking-uri", redact(opts.tracking_uri)]
        if opts.experiment != RunOptions.experiment:
            parts += ["--experiment", opts.experiment]
    if not opts.progress:
        parts.append("--no-progress")
    if opts.warning_signal != RunOptions.warning_signal:
        parts += ["--warning-signal", opts.warning_signal]
    if opts.on_warning != RunOptions.on_warning:
        parts += ["--on-warning", opts.on_warning]
    return shlex.join(parts)


def _command_class(task: str):
    config_cls = CONFIGS[task]
    # `task` is the subcommand itself: not a flag.
    hidden = [("task", Annotated[str, tyro.conf.Suppress], dataclasses.field(default=task))]
    return dataclasses.make_dataclass(f"Train{task.title()}", hidden, bases=(RunOptions, config_cls))


def parse_train(task: str, argv: list[str]):
    """(config, run options) from `plasticity train TASK ...`."""
    argv, notices = upgrade_argv(argv)
    for notice in notices:
        print(f"plasticity: warning: {notice}", file=sys.stderr)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=next(iter(PRESETS[task])))
    known, _ = pre.parse_known_args(argv)
    cmd_cls = _command_class(task)
    base = preset(task, known.preset)
    default = cmd_cls(**dataclasses.asdict(base))
    cmd = parse_args(cmd_cls, argv, prog=f"plasticity train {task}", default=default,
                     description=f"{CONFIGS[task].__doc__}\n\nPresets: {', '.join(PRESETS[task])} "
                                 f"(flags after --preset override it).")
    config_fields = {f.name for f in fields(CONFIGS[task])}
    cfg = CONFIGS[task](**{k: getattr(cmd, k) for k in config_fields})
    opts = RunOptions(**{f.name: getattr(cmd, f.name) for f in fields(RunOptions)})
    given = given_fields(argv, CONFIGS[task])
    if opts.resume is None:
        cfg = validate(cfg)
    return cfg, opts, given


def cmd_train(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(usage())
            return 0
        fail(f"name the task: plasticity train TASK, TASK one of {', '.join(CONFIGS)}")
    task, argv = argv[0], argv[1:]
    if task not in CONFIGS:
        fail(f"unknown task {task!r}: choose one of {', '.join(CONFIGS)}")
    cfg, opts, given = parse_train(task, argv)
    from plasticity.train import train

    # The run's whole life (resume, folder, signals, the MLflow run, the line a stop
    # prints) is plasticity.train.run's; the command adds its options and the summary.
    try:
        result = train(cfg, resume=opts.resume, progress=opts.progress, given=given, tracking=_tracking(opts),
                       signals=opts.signal_plan(), announce=True,
                       again=lambda checkpoint: resume_command(task, checkpoint, opts))
    except Stopped as e:
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once (the run said how to go on)
        return 130
    final = result.final
    summary = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if k.startswith("eval/"))
    print(f"done: {result.run_dir} ({summary})")
    return 0


def _tracking(opts: RunOptions):
    """The MLflow session of a `plasticity train` run (None with --no-tracking): runs named
    as their folders' pattern, every config field as params, the model logged at the end
    as a pyfunc that answers whole episodes."""
    if not opts.tracking:
        return None
    from plasticity.serving.mlflow_pyfunc import episode_flavor
    from plasticity.tracking.session import MlflowSession
    from plasticity.train.run import run_name

    return MlflowSession(opts.tracking_uri, opts.experiment, name=run_name, flavor=episode_flavor, announce=True)
