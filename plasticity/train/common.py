"""Pieces every training loop shares: seeding, devices, run folders, resuming, the
optimiser step, the evaluation schedule, the report hook."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from plasticity.errors import CheckpointError, ConfigError, PlasticityError, StorageError, error_line


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


def eval_progress(total: int, enabled: bool = True, desc: str = "evaluating"):
    """The progress bar of an evaluation of `total` episodes, with tqdm's estimate of the
    time left: on a terminal only (stderr a tty), and only once the evaluation has run for
    2 s (the short evaluations of a training run do not flicker)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ep", desc=desc, leave=False, delay=2.0, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


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
        # torch's message opens with "Error(s) in loading state_dict for X:"; the next line says which.
        lines = [line for line in str(e).splitlines() if line.strip()]
        detail = error_line(lines[1] if len(lines) > 1 else e, limit=120)
        raise CheckpointError(f"{path}: weights do not match the config stored with them ({detail}): "
                              "the file is damaged; use another checkpoint") from None
    return model


def record(history: list[dict], run_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """Append one evaluation to the run's history and to its `metrics.jsonl`."""
    history.append({"step": step, **metrics})
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(history[-1]) + "\n")


EVAL_SEED_OFFSET = 1_000_003
"""Held-out episodes are drawn from `seed + EVAL_SEED_OFFSET`, never used for training."""

def is_run_dir(folder: Path) -> bool:
    """A folder `plasticity train` made (it holds the run's config.json)."""
    return (folder / "config.json").is_file()


def open_run_dir(cfg, run_dir=None) -> Path:
    """The run folder (a new one under `cfg.out` unless given) with `config.json` written;
    an unwritable place is a `StorageError` naming the folder."""
    try:
        run_dir = Path(run_dir) if run_dir is not None else make_run_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    except OSError as e:
        where = run_dir if run_dir is not None else cfg.out
        raise StorageError(f"cannot write the run folder under {where} ({e.strerror or e}): pass --out with a "
                           "writable folder") from None
    return run_dir


def start_run(cfg, resume, run_dir, given: set[str] | None, announce: bool = False, check=None):
    """(config, checkpoint or None, run folder) for a new or resumed run. A resumed run
    takes its config from the checkpoint (`plasticity.train.loop.resume_config`) and
    continues in the checkpoint's run folder, unless `run_dir` is given or `--out` was
    changed, or the checkpoint does not sit in a run folder: then in a new one.
    `check(cfg)` runs on the final config before any folder is made (e.g. data checks)."""
    from plasticity.train.loop import restore_checkpoint, resume_summary

    if resume is None:
        if check is not None:
            check(cfg)
        return cfg, None, open_run_dir(cfg, run_dir)
    cfg, ckpt, changes = restore_checkpoint(resume, type(cfg), cfg, given)
    if check is not None:
        check(cfg)
    check_resumable(cfg, ckpt, resume)
    folder = Path(resume).parent
    if run_dir is None and "out" not in changes and is_run_dir(folder) and Path(resume).name == "checkpoint.pt":
        run_dir = folder
    run_dir = open_run_dir(cfg, run_dir)
    if announce:
        where = "" if run_dir == folder else f", in the new run folder {run_dir}"
        print(f"plasticity: {resume_summary(ckpt, cfg, changes)}{where}", file=sys.stderr)
    return cfg, ckpt, run_dir


def check_resumable(cfg, ckpt: dict, path) -> None:
    """Refuse, before a run folder is made, a checkpoint whose weights or optimiser state do
    not fit the model its stored config builds, or whose task state (a data split) this
    task cannot go on from: a damaged or edited file. (Loads them into a throwaway model.)"""
    from plasticity.tasks import make_task
    from plasticity.train.optim import make_optimizer

    task = make_task(cfg)
    task.check_state(ckpt.get("task_state"), str(path))
    model = task.build_model(cfg)
    restore_state(model, make_optimizer(model, cfg), ckpt, path)


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


def plastic_summary(model: torch.nn.Module) -> dict[str, float]:
    """Learned plasticity parameters worth watching (models with a plastic layer: the first)."""
    from plasticity.nn import PlasticWeights

    plastic = next((m for m in model.modules() if isinstance(m, PlasticWeights)), None)
    if plastic is None:
        return {}
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
