"""What the algorithms and the run share: the report hook, devices, loading a checkpoint's
weights and optimiser state, the learned plasticity values, `model_from_checkpoint`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import torch

from plasticity.errors import CheckpointError, ConfigError, PlasticityError, error_line


class Report(Protocol):
    """Called by `train` at every evaluation. `step` counts training episodes seen;
    metric names are grouped by prefix (`train/`, `eval/`, `perf/`, `plastic/`);
    `files` maps artifact names (`checkpoint`, `completion`, ...) to paths on disk."""

    def __call__(self, step: int, metrics: dict[str, float], files: dict[str, Path]) -> None: ...


class TrainingDiverged(PlasticityError):
    """The loss became NaN or infinite; the last finite state was checkpointed."""

    exit_code = 1


def to_device(x, device):
    """Move a tensor, or a tuple/list of tensors (a task's model input), to `device`."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x.to(device)


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


def eval_progress(total: int, enabled: bool = True, desc: str = "evaluating"):
    """The progress bar of an evaluation of `total` episodes, with tqdm's estimate of the
    time left: on a terminal only (stderr a tty), and only once the evaluation has run for
    2 s (the short evaluations of a training run do not flicker)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ep", desc=desc, leave=False, delay=2.0, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def load_weights(model: torch.nn.Module, ckpt: dict, path) -> torch.nn.Module:
    """Load a checkpoint's weights into the model its config built, with a one-line error
    if they do not fit (a damaged or edited file)."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        # torch's message opens with "Error(s) in loading state_dict for X:"; the next line says which.
        lines = [line for line in str(e).splitlines() if line.strip()]
        detail = error_line(lines[1] if len(lines) > 1 else e, limit=120)
        raise CheckpointError(f"{path}: weights do not match the config stored with them ({detail}): "
                              "the file is damaged; use another checkpoint") from None
    return model


EVAL_SEED_OFFSET = 1_000_003
"""Held-out episodes are drawn from `seed + EVAL_SEED_OFFSET`, never used for training."""


def restore_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict,
                  path="the checkpoint") -> None:
    """Load weights and optimiser state from `ckpt` (read from `path`); each parameter
    group keeps the learning rate this run built it with (`make_optimizer`: --lr, --eta-lr)."""
    load_weights(model, ckpt, path)
    lrs = [group["lr"] for group in optimizer.param_groups]
    if not ckpt.get("optimizer"):
        raise CheckpointError(f"{path} holds no optimiser state, so training cannot go on from it: evaluate it, "
                              "or start a new run")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: its optimiser state is damaged ({type(e).__name__}: "
                              f"{error_line(e, limit=80)}): use another checkpoint") from None
    except ValueError as e:
        raise CheckpointError(f"the checkpoint's optimiser state does not fit this model's parameter groups "
                              f"({error_line(e, limit=100)}): it was written before eta had its own "
                              "learning rate; evaluate it, or start a new run from its weights") from None
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def plastic_summary(model: torch.nn.Module, cfg) -> dict[str, float]:
    """Learned plasticity parameters worth watching, for a plastic network (`cfg.plastic`):
    those of its first plastic layer."""
    from plasticity.nn import PlasticWeights

    if not cfg.plastic:
        return {}
    plastic = next(m for m in model.modules() if isinstance(m, PlasticWeights))
    return {"plastic/eta_mean": float(plastic.eta.detach().mean()),
            "plastic/alpha_abs_mean": float(plastic.alpha.detach().abs().mean())}


def model_from_checkpoint(path, config_cls, device: str = "cpu", split: str | None = None,
                          data_dir: str | None = None):
    """(model, cfg, checkpoint) rebuilt from a checkpoint of any task: the architecture
    comes from its config. `split` / `data_dir`: the data the model will be scored on
    (tasks with data load only that split, from that folder instead of training's)."""
    from plasticity.tasks import make_task
    from plasticity.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location=device)
    cfg = config_cls.from_dict(ckpt["config"])
    if data_dir is not None and hasattr(cfg, "data_dir"):
        cfg = cfg.replace(data_dir=str(data_dir))  # the user's folder, not the one training used
    task = make_task(cfg, split)
    task.check_state(ckpt.get("task_state"), str(path))
    model = load_weights(task.build_model(cfg), ckpt, path)
    return model.to(device), cfg, ckpt
