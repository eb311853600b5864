"""Datasets in their standard layouts, read from a directory the user gives.

    from plasticity.data import load_cifar10, load_omniglot
    train = load_cifar10("data", "train")          # CifarImages: images [N, 32, 32] in [-1, 1], labels [N]
    chars = load_omniglot("data")                  # OmniglotSet: images [C, 20, 31, 31] in [0, 1], names

The directory is `--data-dir` / `$PLASTICITY_DATA` (default `./data`); converted arrays
are cached once under `$PLASTICITY_CACHE` (default `~/.cache/plasticity`). Missing,
truncated or corrupt files raise `DataError` naming the file and the fix. Get the
files with `plasticity data download cifar10|omniglot`.

May import: plasticity.errors, numpy, torch, tqdm
May import in functions: PIL
"""

from plasticity.data.cifar import CifarImages, load_cifar10
from plasticity.data.common import DataError, resolve_data_dir
from plasticity.data.omniglot import OmniglotRuns, OmniglotSet, load_omniglot, load_omniglot_runs

__all__ = ["CifarImages", "DataError", "OmniglotRuns", "OmniglotSet", "load_cifar10", "load_omniglot",
           "load_omniglot_runs", "resolve_data_dir"]
