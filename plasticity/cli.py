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
import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import tyro

from plasticity.config import CONFIGS, PRESETS, preset, validate
from plasticity.errors import PlasticityError

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
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here."""
    experiment: str = "plasticity"
    """MLflow experiment name."""
    resume: str | None = None
    """Continue from this checkpoint.pt: the model, task and seed come from it; the
    schedule (--episodes, --lr, ...) from this command line."""
    progress: bool = True
    """Show a progress bar."""


def fail(message: str) -> None:
    print(f"plasticity: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _command_class(task: str):
    config_cls = CONFIGS[task]
    return dataclasses.make_dataclass(f"Train{task.title()}", [], bases=(RunOptions, config_cls))


def parse_train(task: str, argv: list[str]):
    """(config, run options) from `plasticity train TASK ...`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=next(iter(PRESETS[task])))
    known, _ = pre.parse_known_args(argv)
    cmd_cls = _command_class(task)
    base = preset(task, known.preset)
    default = cmd_cls(**dataclasses.asdict(base))
    cmd = tyro.cli(cmd_cls, args=argv, default=default, prog=f"plasticity train {task}",
                   description=f"{CONFIGS[task].__doc__}\n\nPresets: {', '.join(PRESETS[task])} "
                               f"(flags after --preset override it).")
    config_fields = {f.name for f in fields(CONFIGS[task])}
    cfg = validate(CONFIGS[task](**{k: getattr(cmd, k) for k in config_fields}))
    opts = RunOptions(**{f.name: getattr(cmd, f.name) for f in fields(RunOptions)})
    return cfg, opts


def cmd_train(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(USAGE.format(tasks=", ".join(CONFIGS)))
            return 0
        fail(f"name the task: plasticity train TASK, TASK one of {', '.join(CONFIGS)}")
    task, argv = argv[0], argv[1:]
    if task not in CONFIGS:
        fail(f"unknown task {task!r}: choose one of {', '.join(CONFIGS)}")
    cfg, opts = parse_train(task, argv)
    from plasticity.train import preflight, train
    from plasticity.train.common import run_name

    if opts.resume is None:
        # Data problems fail here, before an MLflow run is opened for nothing.
        preflight(cfg)

    tracker = None
    if opts.tracking:
        from plasticity.tracking.mlflow import MlflowTracker

        tracker = MlflowTracker.open(opts.tracking_uri, opts.experiment, run_name(cfg), cfg.to_dict(),
                                     tags={"task": cfg.task, "model": cfg.model})
        print(f"MLflow run {tracker.run_id} at {tracker.uri}", file=sys.stderr)
    status = "FAILED"
    try:
        result = train(cfg, report=tracker, resume=opts.resume, progress=opts.progress)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("plasticity: interrupted; the checkpoint was saved, continue with --resume", file=sys.stderr)
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


def cmd_evaluate(argv: list[str]) -> int:
    args = tyro.cli(EvaluateArgs, args=argv, prog="plasticity evaluate")
    from plasticity.train import trainer_module

    # The architecture comes from the checkpoint's own config.
    config_cls = CONFIGS[_peek_task(args.checkpoint)]
    figure = Path(args.figure) if args.figure else Path(args.checkpoint).with_name("evaluation.png")
    result = trainer_module(config_cls).evaluate_checkpoint(args.checkpoint, config_cls, episodes=args.episodes,
                                                           seed=args.seed, figure=figure, device=args.device,
                                                           split=args.split)
    cfg = result["config"]
    print(f"{cfg.task}/{cfg.model} after {result['episode']} training episodes, {args.episodes} fresh episodes:")
    for k, v in result["metrics"].items():
        print(f"  {k}: {v:.4f}")
    print(f"figure: {result['figure']}")
    return 0


def _peek_task(path: str) -> str:
    from plasticity.errors import CheckpointError
    from plasticity.train import load_checkpoint

    task = load_checkpoint(path)["config"].get("task")
    if task not in CONFIGS:
        raise CheckpointError(f"{path} is for task {task!r}, which this version does not know: upgrade plasticity")
    return task


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
        args = tyro.cli(DownloadArgs, args=argv, prog="plasticity data download")
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
        for split in ("train", "validation", "test"):
            data = load_cifar10(args.data_dir, split)
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
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
