"""Checkpoints: model, optimizer, config, episode count and RNG state in one file.

Written atomically (a temporary file in the same folder, then `os.replace`), so an
interrupted save never leaves a half-written checkpoint. Read with
`torch.load(weights_only=True)`: a checkpoint holds tensors and plain Python values
only, and loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from plasticity import __version__
from plasticity.errors import CheckpointError, StorageError, error_line

FORMAT = "plasticity-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, config: dict[str, Any],
                    episode: int, optimizer: torch.optim.Optimizer | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint to `path` atomically and return the path."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "plasticity_version": __version__,
        "config": config,
        "episode": episode,
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        **(extra or {}),
    }
    # Serialised in memory first, so that a failed write is an OSError of our own write.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temporary files of saves that were killed (SIGKILL, power loss) are removed here.
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StorageError(f"cannot write the checkpoint {path} ({e.strerror or e}): make its folder writable "
                           "or pass --out with another folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = "the previous checkpoint is intact" if path.exists() else "no earlier checkpoint exists"
            raise StorageError(f"could not write the checkpoint {path} ({e.strerror or e}); {kept}: free disk "
                               f"space, then resume with --resume {path}") from None
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; raise `CheckpointError` with a fix if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: pass the path of a checkpoint.pt "
                              "written by `plasticity train`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or not written by "
                              f"plasticity: {error_line(e, limit=160)}): use another checkpoint or retrain") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a plasticity checkpoint (no '{FORMAT}' marker): "
                              "pass a checkpoint.pt written by `plasticity train`")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer plasticity ({payload.get('plasticity_version')}): "
                              "upgrade with `pip install -U plasticity`")
    for key in ("config", "model", "episode"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks its {key!r} entry: the file is damaged; use another checkpoint")
    return payload
