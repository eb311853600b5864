"""The `plasticity` command line.

    plasticity train patterns --preset small          train one model (MLflow-tracked)
    plasticity evaluate runs/<run>/checkpoint.pt      score a checkpoint on fresh episodes
    plasticity data download cifar10 --data-dir DIR   fetch a dataset (checksums verified, resumable)
    plasticity sweep --task patterns ...              Ray Tune + Optuna sweep (needs [sweep])
    plasticity serve models:/plasticity-patterns/1    live sessions over HTTP (needs [serve])

Every flag comes from the config dataclasses (`plasticity.config`), parsed by tyro;
`--help` on any command lists them with their documentation. Usage errors and bad
input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shlex
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import tyro

from plasticity.config import CONFIGS, PRESETS, preset, validate
from plasticity.config.renames import upgrade_argv
from plasticity.errors import PlasticityError
from plasticity.redact import redact
from plasticity.train.loop import SignalPlan, Stopped, WarningSignal

USAGE = """usage: plasticity COMMAND ...

commands:
  train TASK     train one model; TASK is one of: {tasks}
  evaluate CKPT  score a checkpoint on fresh held-out episodes and draw its figure
  data ACTION    `download cifar10|omniglot|omniglot-small` or `check cifar10|omniglot` (--data-dir DIR)
  sweep          hyperparameter sweep with Ray Tune + Optuna (pip install 'plasticity[sweep]')
  serve MODEL    live sessions of a trained network over HTTP, with Ray Serve (pip install 'plasticity[serve]')

Run `plasticity COMMAND --help` for the flags of a command."""


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
    --warning-signal and --on-warning). Passwords are masked."""
    parts = ["plasticity", "train", task, "--resume", str(checkpoint)]
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


def fail(message: str, code: int = 2) -> None:
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
            print(USAGE.format(tasks=", ".join(CONFIGS)))
            return 0
        fail(f"name the task: plasticity train TASK, TASK one of {', '.join(CONFIGS)}")
    task, argv = argv[0], argv[1:]
    if task not in CONFIGS:
        fail(f"unknown task {task!r}: choose one of {', '.join(CONFIGS)}")
    cfg, opts, given = parse_train(task, argv)
    from plasticity.train import preflight, train
    from plasticity.train.common import start_run
    from plasticity.train.loop import Interrupted, StoppedBeforeTraining, raise_on_signals, signal_name, signal_plan

    # Resolve the run first (config from the checkpoint, run folder), and check the data,
    # before an MLflow run is opened for nothing.
    def check(cfg) -> None:
        preflight(cfg)
        if opts.tracking:
            from plasticity.tracking.mlflow import check_tracking, default_tracking_uri

            check_tracking(opts.tracking_uri or default_tracking_uri())

    tracker, run_dir, status = None, None, "FAILED"
    try:
        # Signals stop the run with one line from here on: at once before training (nothing
        # to save yet), after the current step with a checkpoint once it runs (run_loop).
        with signal_plan(opts.signal_plan()), raise_on_signals("before training"):
            cfg, ckpt, run_dir = start_run(cfg, opts.resume, None, given, announce=True, check=check)
            if opts.tracking:
                tracker = _open_tracker(opts, cfg, run_dir, resumed=ckpt is not None)
                print(f"MLflow run {tracker.run_id} at {redact(tracker.uri)}", file=sys.stderr)
            result = train(cfg, report=tracker, resume=opts.resume, progress=opts.progress, run_dir=run_dir,
                           given=given)
        status = "FINISHED"
    except Interrupted as e:
        status = "KILLED"
        again = resume_command(cfg.task, e.checkpoint, opts)
        if tracker is not None:
            tracker.attempt(tracker.client.set_tag, tracker.run_id, "resumable", again)
        print(f"plasticity: stopped by {signal_name(e.signum)} at episode {e.episode}; checkpoint saved: "
              f"continue with `{again}`", file=sys.stderr)
        return e.exit_code
    except StoppedBeforeTraining as e:
        status = "KILLED"
        again = f"`{resume_command(cfg.task, opts.resume, opts)}`" if opts.resume else "the same command again"
        print(f"plasticity: {e}: nothing new to save; to go on, run {again}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        status = "KILLED"
        last = run_dir / "checkpoint.pt" if run_dir is not None else opts.resume
        print("plasticity: stopped at once; " + (f"continue from the last checkpoint with "
              f"`{resume_command(cfg.task, last, opts)}`" if last else "run the same command again"),
              file=sys.stderr)
        return 130
    finally:
        if tracker is not None and status != "FINISHED":
            tracker.finish(status=status, retries=1)
    if tracker is not None:
        tracker.finish(result.run_dir, model=result.model)
    final = result.final
    summary = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if k.startswith("eval/"))
    print(f"done: {result.run_dir} ({summary})")
    return 0


TRACKING_RUN_FILE = "mlflow_run_id"
"""Holds the MLflow run id in a run folder, so that a resumed run continues its MLflow run."""


def _open_tracker(opts: RunOptions, cfg, run_dir: Path, resumed: bool):
    """The MLflow run of this training run: the one recorded in its folder when resuming
    (marked running again), else a new one, recorded there."""
    from plasticity.tracking.mlflow import MlflowTracker
    from plasticity.train.common import run_name

    id_file = run_dir / TRACKING_RUN_FILE
    if resumed and id_file.is_file():
        tracker = MlflowTracker.reopen(opts.tracking_uri, id_file.read_text().strip())
        if tracker is not None:
            return tracker
    tracker = MlflowTracker.open(opts.tracking_uri, opts.experiment, run_name(cfg), cfg.to_dict(),
                                 tags={"task": cfg.task, "model": cfg.model})
    id_file.write_text(tracker.run_id)
    return tracker


@dataclass
class EvaluateArgs:
    """Score a checkpoint on fresh held-out episodes and write its completion figure."""

    checkpoint: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """Path of a checkpoint.pt written by `plasticity train`."""
    episodes: int = 1000
    """Fresh episodes to score."""
    split: str = "test"
    """Data split to draw them from (tasks with data): `test`, `validation`, `train`;
    omniglot also `runs` (the official one-shot runs, all_runs.zip)."""
    seed: int = 12345
    """Seed of the fresh episodes (different from training's)."""
    figure: str | None = None
    """Where to write the figure; default evaluation.png next to the checkpoint."""
    device: str = "cpu"
    """Device to run on."""
    data_dir: str | None = None
    """Data folder to score on (tasks with data; the standard layout, e.g. only test_batch
    for CIFAR-10's test split); default $PLASTICITY_DATA, else the folder training used."""


def cmd_evaluate(argv: list[str]) -> int:
    import os

    args = parse_args(EvaluateArgs, argv, prog="plasticity evaluate")
    from plasticity.config import MAX_INT, check_evaluation
    from plasticity.train import evaluate_checkpoint

    # The architecture comes from the checkpoint's own config. Everything the command
    # was given is checked before the (maybe long) scoring starts.
    saved = _peek_config(args.checkpoint)
    config_cls = type(saved)
    if not 0 <= args.seed <= MAX_INT:
        fail(f"--seed must be in 0..2**62, got {args.seed}: pass e.g. --seed {EvaluateArgs.seed}")
    check_evaluation(saved, args.episodes, "--episodes")
    figure = Path(args.figure) if args.figure else Path(args.checkpoint).with_name("evaluation.png")
    check_figure_path(figure, "--figure", keep=Path(args.checkpoint))
    data_dir = None
    if "data_dir" in {f.name for f in fields(config_cls)}:
        data_dir, source = args.data_dir, "--data-dir"
        if data_dir is None and os.environ.get("PLASTICITY_DATA"):
            data_dir, source = os.environ["PLASTICITY_DATA"], "$PLASTICITY_DATA"
        if data_dir is None:
            data_dir, source = saved.data_dir or "data", "the checkpoint"
        print(f"data: {Path(data_dir).resolve()} (from {source})")
    result = evaluate_checkpoint(args.checkpoint, config_cls, episodes=args.episodes, seed=args.seed, figure=figure,
                                 device=args.device, split=args.split, data_dir=data_dir)
    cfg = result["config"]
    print(f"{cfg.task}/{cfg.model} after {result['episode']} training episodes, {args.episodes} fresh episodes:")
    for k, v in result["metrics"].items():
        print(f"  {k}: {v:.6g}")
    print(f"figure: {result['figure']}")
    return 0


def _peek_config(path: str):
    """The config stored in checkpoint `path`, validated (its task picks the config class);
    a file that is not a checkpoint of a known task is a one-line `CheckpointError`."""
    from plasticity.train import load_checkpoint
    from plasticity.train.checkpoint import stored_config

    return stored_config(load_checkpoint(path)["config"], path)


def check_figure_path(path: Path, flag: str, keep: Path | None = None) -> None:
    """Refuse, before any work, a figure path matplotlib cannot write (an unknown or missing
    extension), whose folder does not exist, that is a folder, or that is the file `keep`
    (the checkpoint being evaluated)."""
    from matplotlib.backend_bases import FigureCanvasBase

    from plasticity.errors import ConfigError

    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in kinds:
        what = f"'.{suffix}' files" if suffix else "a file name without an extension"
        raise ConfigError(f"{flag} {path}: matplotlib cannot write {what}: pass a path ending in .png, .pdf or "
                          f".svg (it writes {', '.join(sorted(kinds))})")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder: pass a file path such as {path / 'evaluation.png'}")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {path.parent} does not exist: create it or pass another path")
    if keep is not None and path.resolve() == keep.resolve():
        raise ConfigError(f"{flag} {path} would overwrite the checkpoint: pass another path")


@dataclass
class DownloadArgs:
    """Download a dataset from its official source into --data-dir, verifying checksums;
    an interrupted download resumes when the command is run again."""

    dataset: Annotated[Literal["cifar10", "omniglot", "omniglot-small"], tyro.conf.Positional]
    """`cifar10` (python batches, 163 MB), `omniglot` (full background + evaluation sets and the
    one-shot runs) or `omniglot-small` (the official minimal background splits + runs)."""
    data_dir: str | None = None
    """Where to put the data; default $PLASTICITY_DATA, else ./data."""
    mirror: str | None = None
    """Fetch each file as MIRROR/<filename> instead of the official URL (checksums still checked)."""
    progress: bool = True
    """Show a progress bar."""
    keep_archive: bool = False
    """Keep the CIFAR-10 tar.gz after extracting it."""


def cmd_data(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: plasticity data download {cifar10,omniglot,omniglot-small} [--data-dir DIR] [--mirror URL]\n"
              "       plasticity data check {cifar10,omniglot} [--data-dir DIR]")
        return 0 if argv else 2
    action, argv = argv[0], argv[1:]
    if action == "download":
        args = parse_args(DownloadArgs, argv, prog="plasticity data download")
        from plasticity.data.download import download

        paths = download(args.dataset, args.data_dir, mirror=args.mirror, progress=args.progress,
                         keep_archive=args.keep_archive)
        print(f"done: {args.dataset} in {paths[0].parent}")
        return 0
    if action == "check":
        return _data_check(argv)
    fail(f"unknown data action {action!r}: choose download or check")
    return 2


def _data_check(argv: list[str]) -> int:
    pre = argparse.ArgumentParser(prog="plasticity data check")
    pre.add_argument("dataset", choices=["cifar10", "omniglot"])
    pre.add_argument("--data-dir", default=None)
    args = pre.parse_args(argv)
    from plasticity.data import load_cifar10, load_omniglot, load_omniglot_runs

    if args.dataset == "cifar10":
        from plasticity.data.cifar import SPLITS, cifar_dir

        folder = cifar_dir(args.data_dir)  # one line if there is no batch at all
        print(f"cifar10 in {folder}")
        for split in ("train", "validation", "test"):
            # Check what is there: a folder with only test_batch can still score checkpoints.
            missing = [name for name in SPLITS[split] if not (folder / name).is_file()]
            if missing:
                print(f"cifar10 {split}: not present ({', '.join(missing)} missing)")
                continue
            data = load_cifar10(folder, split)
            print(f"cifar10 {split}: {len(data)} images {list(data.images.shape[1:])}, "
                  f"range [{data.images.min():.2f}, {data.images.max():.2f}]")
        return 0
    chars = load_omniglot(args.data_dir)
    print(f"omniglot: {len(chars)} characters x {chars.images.shape[1]} drawings, {len(chars.alphabets())} "
          f"alphabets, sets {', '.join(sorted(set(chars.sets)))}")
    try:
        runs = load_omniglot_runs(args.data_dir)
        print(f"omniglot one-shot runs: {len(runs.answers)} runs x {runs.answers.shape[1]} test items")
    except PlasticityError as e:
        print(f"omniglot one-shot runs: not available ({e})")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    try:
        from tune.sweep import main as sweep_main
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("ray", "optuna", "psycopg"):
            raise
        fail(f"the sweep service needs the sweep extras ({e.name} is missing): pip install 'plasticity[sweep]'")
    return sweep_main(argv, prog="plasticity sweep")


def cmd_serve(argv: list[str]) -> int:
    from plasticity.serving.cli import main as serve_main

    return serve_main(argv)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "data": cmd_data, "sweep": cmd_sweep, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(tasks=", ".join(CONFIGS)))
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
    except OSError as e:
        # Backstop for a file that cannot be read or written where no check named it.
        where = f" ({e.filename})" if e.filename else ""
        fail(f"{e.strerror or e}{where}: check the path, its permissions and the free disk space", 1)
    except MemoryError:
        fail("out of memory: lower the model sizes or --batch-size", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
