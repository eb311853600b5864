"""`plasticity evaluate CHECKPOINT`: score a checkpoint on fresh held-out episodes and
write its figure; everything it is given is checked before the scoring starts.

May import in functions: matplotlib
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import tyro

from plasticity.cliargs import fail, parse_args


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
