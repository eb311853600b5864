"""Pieces every training loop shares: seeding, devices, run folders, resuming, the
optimiser step, the evaluation schedule, the report hook."""

from __future__ import annotations

import json
import random
import time
from dataclasses import fields
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


EVAL_SEED_OFFSET = 1_000_003
"""Held-out episodes are drawn from `seed + EVAL_SEED_OFFSET`, never used for training."""

TRAIN_FIELDS = {"episodes", "batch_size", "lr", "eta_lr", "grad_clip", "max_minutes", "eval_every", "eval_episodes",
                "checkpoint_every", "device", "out"}
"""Fields that a resumed run takes from the new command line; all others (model, task,
seed) come from the checkpoint."""


def restore_config(cfg, resume) -> tuple[object, dict]:
    """(config, checkpoint) for resuming: the schedule (`TRAIN_FIELDS`) from `cfg`, the
    rest from the checkpoint."""
    from plasticity.config import validate
    from plasticity.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(resume)
    saved = type(cfg).from_dict(ckpt["config"])
    cfg = validate(type(cfg)(**{f.name: getattr(cfg if f.name in TRAIN_FIELDS else saved, f.name)
                                for f in fields(cfg)}))
    return cfg, ckpt


def restore_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict) -> tuple[int, list[dict]]:
    """Load weights and optimiser state from `ckpt`; each parameter group keeps the
    learning rate this run built it with (`make_optimizer`: --lr, --eta-lr). Returns
    (episodes done, history)."""
    model.load_state_dict(ckpt["model"])
    lrs = [group["lr"] for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:
        raise CheckpointError(f"the checkpoint's optimiser state does not fit this model's parameter groups "
                              f"({str(e).splitlines()[0][:100]}): it was written before eta had its own "
                              "learning rate; evaluate it, or start a new run from its weights") from None
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    return ckpt["episode"], list(ckpt.get("history", []))


def open_run_dir(cfg, run_dir) -> tuple[Path, Path]:
    """The run folder (a new one unless given) with `config.json`; returns (folder, checkpoint path)."""
    run_dir = Path(run_dir) if run_dir is not None else make_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return run_dir, run_dir / "checkpoint.pt"


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   grad_clip: float | None, episode: int, save) -> None:
    """Backpropagate and step; a non-finite loss saves the last finite state (`save()`
    returns its path) and raises `TrainingDiverged` instead."""
    if not torch.isfinite(loss):
        path = save()
        raise TrainingDiverged(f"loss became {loss.item()} at episode {episode}: lower --lr or set "
                               f"--grad-clip (last finite state saved to {path})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def crossed(previous: int, now: int, every: int, total: int, stop: bool = False) -> bool:
    """True when the episode count passed a multiple of `every` (or the end) this step."""
    return stop or now // every > previous // every or now >= total


def plastic_summary(model: torch.nn.Module) -> dict[str, float]:
    """Learned plasticity parameters worth watching (models with a plastic core)."""
    plastic = getattr(getattr(model, "core", model), "plastic", None)
    if plastic is None:
        return {}
    return {"plastic/eta_mean": float(plastic.eta.detach().mean()),
            "plastic/alpha_abs_mean": float(plastic.alpha.detach().abs().mean())}
