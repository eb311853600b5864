"""`plasticity data download|check DATASET`: fetch a dataset from its official source
(checksums verified, resumable), or check a folder in the standard layout.

May import in functions: plasticity.data
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from plasticity.cliargs import fail, parse_args
from plasticity.errors import PlasticityError


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
