"""Where data and caches live, and the one error type data problems raise."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from plasticity.errors import PlasticityError

CACHE_VERSION = 1
"""Bumped whenever a conversion changes, so stale caches are rebuilt."""


class DataError(PlasticityError):
    """A data file is missing, truncated or corrupt (the message names it and the fix)."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir`, else `$PLASTICITY_DATA`, else `./data`."""
    return Path(data_dir or os.environ.get("PLASTICITY_DATA") or "data").expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get("PLASTICITY_CACHE") or Path.home() / ".cache" / "plasticity").expanduser()


def find_dir(root: Path, subdirs: Iterable[str], has: Callable[[Path], bool]) -> Path | None:
    """The first of `root`, `root/sub...` for which `has(dir)` is true."""
    for d in (root, *(root / s for s in subdirs)):
        if d.is_dir() and has(d):
            return d
    return None


def cache_key(kind: str, sources: list[Path], **params) -> str:
    """A name that changes when any source file (path, size, mtime) or parameter changes."""
    h = hashlib.sha256(f"{kind}:{CACHE_VERSION}:{sorted(params.items())}".encode())
    for src in sources:
        st = src.stat()
        h.update(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{kind}-{h.hexdigest()[:16]}"


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load the arrays cached under `key`, or build them and cache them (atomically)."""
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache location only costs the conversion next time
    return arrays
