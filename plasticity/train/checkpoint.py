"""Checkpoints: model, optimizer, config, episode count and RNG state in one file.

Written atomically (a temporary file in the same folder, then `os.replace`), so an
interrupted save never leaves a half-written checkpoint. Read with
`torch.load(weights_only=True)`: a checkpoint holds tensors and plain Python values
only, and loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from plasticity import __version__
from plasticity.errors import CheckpointError, ConfigError, StorageError, error_line

FORMAT = "plasticity-checkpoint"
FORMAT_VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"
"""How every file `torch.save` writes begins (its zip format, the default since torch 1.6)."""


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
    """Read and check a checkpoint; raise `CheckpointError` with a fix if it is unusable:
    missing, unreadable, or holding anything but what `save_checkpoint` writes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: pass the path of a checkpoint.pt "
                              "written by `plasticity train`")
    def unreadable(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or not written by "
                               f"plasticity: {why}): use another checkpoint or retrain")

    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise unreadable(e.strerror or str(e)) from None
    if head != ZIP_MAGIC:
        raise unreadable("it is not a zip archive as torch.save writes")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    # The unpickler of a file that is not a checkpoint (another program's archive, a
    # damaged one) fails in many ways (KeyError, IndexError, struct.error, ...): every one
    # means "not a checkpoint". A MemoryError is not about the file.
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001
        raise unreadable(f"{type(e).__name__}: {error_line(e, limit=160)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a plasticity checkpoint (no '{FORMAT}' marker): "
                              "pass a checkpoint.pt written by `plasticity train`")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} has a damaged header (format_version {version!r}): use another checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer plasticity ({payload.get('plasticity_version')}): "
                              "upgrade with `pip install -U plasticity`")
    for key in ("config", "model", "episode"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks its {key!r} entry: the file is damaged; use another checkpoint")
    problem = payload_problem(payload)
    if problem:
        raise CheckpointError(f"{path} is damaged ({problem}): use another checkpoint or retrain")
    stored_config(payload["config"], path)
    return payload


def stored_config(config: dict[str, Any], path: str | Path):
    """The config a checkpoint's `config` entry describes, validated by its task's config
    class; a task this version does not know, or a stored config it refuses (a field
    renamed long ago, a value edited by hand), is a `CheckpointError` naming the file."""
    from plasticity.config import CONFIGS

    task = config.get("task")
    if not isinstance(task, str) or task not in CONFIGS:
        raise CheckpointError(f"{path} is for task {task!r}, which neither plasticity nor a loaded plugin registers: "
                              "load the plugin that brings it (--plugin MODULE, $PLASTICITY_PLUGINS or its installed "
                              "package), or upgrade plasticity")
    try:
        return CONFIGS[task].from_dict(config)
    except ConfigError as e:
        raise CheckpointError(f"{path} holds a config this version refuses: {e}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_dict(value, keys=str, values=object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, keys) and isinstance(v, values) for k, v in value.items())


def payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the entries of a checkpoint, as `save_checkpoint` and the
    training loop write them (None: nothing). Checked on loading, so that a file edited
    or damaged by hand is refused in one line rather than failing deep inside a resume."""
    checks = [
        ("config", _is_dict(payload["config"]), "a mapping of config fields"),
        ("episode", _is_int(payload["episode"]) and payload["episode"] >= 0, "a count of episodes"),
        ("model", _is_dict(payload["model"], values=torch.Tensor), "a mapping of tensors"),
        ("optimizer", payload.get("optimizer") is None or _is_dict(payload["optimizer"]), "None or a mapping"),
        ("history", isinstance(payload.get("history", []), list)
         and all(_is_dict(h) for h in payload.get("history", [])), "a list of mappings"),
        ("loop", _loop_ok(payload.get("loop", {})), "the loop's counters"),
        ("task_state", payload.get("task_state") is None or _is_dict(payload["task_state"]), "None or a mapping"),
        ("rng", "rng" not in payload or _rng_ok(payload["rng"]), "the random streams"),
    ]
    for key, ok, expected in checks:
        if not ok:
            return f"its {key!r} entry is not {expected}"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _loop_ok(loop) -> bool:
    """The loop's state as `plasticity.train.loop.run_loop` writes it (every key optional)."""
    return (_is_dict(loop) and _is_dict(loop.get("sums", {}), values=(int, float))
            and _is_int(loop.get("episodes", 0)) and _is_number(loop.get("elapsed_s", 0.0)))


def _byte_state(value) -> bool:
    """A torch generator's state: a 1-D uint8 tensor."""
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _rng_ok(state) -> bool:
    """The random streams as `plasticity.train.run.rng_state` writes them."""
    if not _is_dict(state) or not _byte_state(state.get("torch")):
        return False
    python, numpy = state.get("python"), state.get("numpy")
    python_ok = (isinstance(python, (tuple, list)) and len(python) == 3 and _is_int(python[0])
                 and isinstance(python[1], (tuple, list)) and len(python[1]) == 625
                 and all(_is_int(v) for v in python[1]))
    numpy_ok = (_is_dict(numpy) and isinstance(numpy.get("kind"), str) and isinstance(numpy.get("keys"), torch.Tensor)
                and numpy["keys"].shape == (624,) and _is_int(numpy.get("pos")) and _is_int(numpy.get("has_gauss"))
                and _is_number(numpy.get("gauss")))
    generators = state.get("generators", {})
    return python_ok and numpy_ok and _is_dict(generators) and all(_byte_state(g) for g in generators.values())
