"""Pieces every training loop shares: seeding, devices, run folders, the report hook."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from plasticity.errors import CheckpointError, ConfigError, PlasticityError


class Report(Protocol):
    """Called by `train` at every evaluation. `step` counts training episodes seen;
    metric names are grouped by prefix (`train/`, `eval/`, `perf/`, `plastic/`);
    `files` maps artifact names (`checkpoint`, `completion`, ...) to paths on disk."""

    def __call__(self, step: int, metrics: dict[str, float], files: dict[str, Path]) -> None: ...


class TrainingDiverged(PlasticityError):
    """The loss became NaN or infinite; the last finite state was checkpointed."""


def to_device(x, device):
    """Move a tensor, or a tuple/list of tensors (a task's model input), to `device`."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x.to(device)


def seed_everything(seed: int) -> None:
    """Seed `random`, `numpy` and `torch` (all devices) in one place."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here: pass --device cpu")
    return device


def run_name(cfg) -> str:
    """`{task}__{model}__{rule}__{seed}__{time}`, as in CleanRL."""
    rule = cfg.rule if cfg.model == "plastic" else "none"
    return f"{cfg.task}__{cfg.model}__{rule}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def make_run_dir(cfg) -> Path:
    base = Path(cfg.out) / run_name(cfg)
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def load_weights(model: torch.nn.Module, ckpt: dict, path) -> torch.nn.Module:
    """Load a checkpoint's weights into the model its config built, with a one-line error
    if they do not fit (a damaged or edited file)."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0][:120]
        raise CheckpointError(f"{path}: weights do not match the config stored with them ({first}): "
                              "the file is damaged; use another checkpoint") from None
    return model


def record(history: list[dict], run_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Append one evaluation to the run's history and to its `metrics.jsonl`."""
    history.append({"step": step, **metrics})
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(history[-1]) + "\n")
