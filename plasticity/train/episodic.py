"""Supervised episodic training: `train(cfg, report) -> TrainResult`.

Each optimiser step draws `batch_size` fresh episodes, runs the network through them
from a zero state, and backpropagates the task loss through the whole episode into
w, alpha and eta (Adam). Every `eval_every` episodes the model is scored on a fixed
set of held-out episodes and `report(step, metrics, files)` is called. The run folder
holds `checkpoint.pt` (written atomically), `metrics.jsonl` and the figures.

    from plasticity.config import preset
    from plasticity.train import train
    result = train(preset("patterns", "small"), report=lambda step, m, files: print(step, m))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from plasticity.config import ModelConfig
from plasticity.models import SequenceModel, count_parameters, make_model
from plasticity.plots import curves_figure, save_figure
from plasticity.tasks import make_task
from plasticity.train.checkpoint import load_checkpoint, save_checkpoint
from plasticity.train.common import (
    EVAL_SEED_OFFSET,
    Report,
    crossed,
    load_weights,
    open_run_dir,
    optimizer_step,
    plastic_summary,
    record,
    resolve_device,
    restore_config,
    restore_state,
    seed_everything,
    to_device,
)


@dataclass
class TrainResult:
    model: SequenceModel
    run_dir: Path
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    """One dict per evaluation: `{"step": episodes, **metrics}`."""

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


@torch.no_grad()
def evaluate(model: SequenceModel, task, episodes, device, batch_size: int = 64) -> dict[str, float]:
    """Mean of the task's metrics over held-out `episodes` (a list of batches)."""
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for ep in episodes:
        outputs, _ = model(to_device(task.inputs(ep), device))
        n = outputs.shape[0]
        for k, v in task.metrics(outputs, ep).items():
            totals[k] = totals.get(k, 0.0) + v * n
        count += n
    model.train()
    return {k: v / count for k, v in totals.items()}


def eval_chunk(n_neurons: int, cap: int = 256) -> int:
    """Episodes per no-grad evaluation batch: about 16 MB of Hebb `[B, N, N]` per batch.
    Measured at N = 1001 on 2 cores: 32 episodes take 3.1 s in batches of 4, 16 s in
    one batch of 32 (the larger batch falls out of cache)."""
    return max(1, min(cap, (1 << 22) // (n_neurons * n_neurons)))


def task_state(task) -> dict:
    """What a task stores with the checkpoint (e.g. Omniglot's character split)."""
    return task.state() if hasattr(task, "state") else {}


def check_task_state(task, ckpt: dict, source) -> None:
    if hasattr(task, "check_state"):
        task.check_state(ckpt.get("task_state"), str(source))


def task_eval_chunk(task, cfg) -> int:
    """Evaluation batch size: the task's own choice, else sized by the Hebb tensor."""
    return getattr(task, "eval_chunk", None) or eval_chunk(task.n_io + cfg.extra_neurons)


def heldout_episodes(task, cfg, chunk: int | None = None) -> list:
    """The fixed held-out episodes, drawn from `seed + EVAL_SEED_OFFSET`, in batches."""
    chunk = chunk or task_eval_chunk(task, cfg)
    g = torch.Generator().manual_seed(cfg.seed + EVAL_SEED_OFFSET)
    sizes = [min(chunk, cfg.eval_episodes - i) for i in range(0, cfg.eval_episodes, chunk)]
    return [task.sample(n, g) for n in sizes]


def preflight(cfg) -> None:
    """Build the task once: reads (and caches) its data, so a missing file fails here."""
    make_task(cfg)


def train(cfg, report: Report | None = None, *, resume: str | Path | None = None,
          progress: bool = True, run_dir: str | Path | None = None) -> TrainResult:
    """Train the model described by `cfg`; see the module docstring."""
    ckpt = None
    if resume is not None:
        cfg, ckpt = restore_config(cfg, resume)
        run_dir = Path(resume).parent if run_dir is None else run_dir
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    task = make_task(cfg)
    model = make_model(cfg, task).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    episode, history = 0, []
    if ckpt is not None:
        check_task_state(task, ckpt, resume)
        episode, history = restore_state(model, optimizer, ckpt, cfg.lr)
        generator.set_state(ckpt["generator"])
    run_dir, ckpt_path = open_run_dir(cfg, run_dir)
    heldout = heldout_episodes(task.heldout() if hasattr(task, "heldout") else task, cfg)

    saved_at = [None]

    def checkpoint() -> Path:
        if saved_at[0] != episode:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, config=cfg.to_dict(), episode=episode,
                            extra={"generator": generator.get_state(), "history": history,
                                   "task_state": task_state(task)})
            saved_at[0] = episode
        return ckpt_path

    bar = tqdm(total=cfg.episodes, initial=episode, unit="ep", disable=not progress, dynamic_ncols=True)
    n_params = count_parameters(model)
    bar.set_description(f"{cfg.task}/{cfg.model} ({n_params:,} params)")
    train_loss, train_n, t_last, ep_last = 0.0, 0, time.perf_counter(), episode
    # Wall time spent training (including evaluations), carried across resumes.
    elapsed_before = history[-1].get("perf/elapsed_s", 0.0) if history else 0.0
    t_start = time.perf_counter()
    deadline = None if cfg.max_minutes is None else t_start + 60 * cfg.max_minutes
    try:
        while episode < cfg.episodes:
            batch = task.sample(cfg.batch_size, generator)
            outputs, _ = model(to_device(task.inputs(batch), device))
            loss = task.loss(outputs, batch)
            optimizer_step(loss, model, optimizer, cfg.grad_clip, episode, checkpoint)
            previous, episode = episode, episode + cfg.batch_size
            train_loss, train_n = train_loss + loss.item() * cfg.batch_size, train_n + cfg.batch_size
            bar.update(cfg.batch_size)
            out_of_time = deadline is not None and time.perf_counter() >= deadline
            crossed_now = partial(crossed, previous, episode, total=cfg.episodes, stop=out_of_time)
            if crossed_now(cfg.eval_every):
                now = time.perf_counter()
                metrics = {"train/loss": train_loss / train_n,
                           "perf/episodes_per_s": (episode - ep_last) / (now - t_last)}
                metrics["perf/elapsed_s"] = elapsed_before + now - t_start
                metrics.update({f"eval/{k}": v for k, v in evaluate(model, task, heldout, device).items()})
                metrics.update(plastic_summary(model))
                metrics["model/params"] = n_params
                record(history, run_dir, episode, metrics)
                files = {"completion": _completion_png(model, task, heldout[0], device, run_dir)}
                if crossed_now(cfg.checkpoint_every):
                    files["checkpoint"] = checkpoint()
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                                err=f"{metrics.get('eval/bit_error', float('nan')):.4f}")
                if report is not None:
                    report(episode, metrics, files)
                train_loss, train_n = 0.0, 0
                t_last, ep_last = time.perf_counter(), episode
            elif crossed_now(cfg.checkpoint_every):
                checkpoint()
            if out_of_time:
                break
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        raise
    bar.close()
    checkpoint()
    _learning_curve_png(history, run_dir)
    return TrainResult(model, run_dir, ckpt_path, history)


def _completion_png(model, task, episode, device, run_dir: Path, name: str = "completion.png") -> Path:
    """The task's figure of the first episode of `episode` and the model's answer."""
    with torch.no_grad():
        outputs, _ = model(to_device(task.inputs(episode), device))
    path = run_dir / name
    save_figure(task.figure(outputs, episode), path)
    return path


def _learning_curve_png(history: list[dict], run_dir: Path) -> Path | None:
    keys = [k for k in ("eval/bit_error", "eval/loss") if history and k in history[0]]
    if not keys:
        return None
    steps = [h["step"] for h in history]
    fig = curves_figure({k: (steps, [max(h[k], 1e-5) for h in history]) for k in keys},
                        xlabel="training episodes", ylabel="held-out value")
    path = run_dir / "learning_curve.png"
    save_figure(fig, path)
    return path


def model_from_checkpoint(path: str | Path, config_cls, device: str = "cpu", split: str | None = None,
                          data_dir: str | None = None):
    """(model, cfg, checkpoint) rebuilt from a checkpoint: the architecture comes from it.
    `split` / `data_dir`: the data the model will be scored on (only that split is loaded)."""
    ckpt = load_checkpoint(path, map_location=device)
    cfg = config_cls.from_dict(ckpt["config"])
    if data_dir is not None and hasattr(cfg, "data_dir"):
        cfg = cfg.replace(data_dir=str(data_dir))  # the user's folder, not the one training used
    task = make_task(cfg, split)
    check_task_state(task, ckpt, path)
    model = load_weights(make_model(cfg, task), ckpt, path)
    return model.to(device), cfg, ckpt


__all__ = ["ModelConfig", "TrainResult", "evaluate", "model_from_checkpoint", "train"]


def evaluate_checkpoint(path: str | Path, config_cls, *, episodes: int, seed: int, figure: Path,
                        device: str = "cpu", split: str = "test", data_dir: str | None = None) -> dict:
    """Score a checkpoint on `episodes` fresh episodes drawn from `seed` (from the data
    split `split` for tasks with data); write its figure. Accuracies get a 95% interval.

    Returns `{"config", "episode", "metrics", "figure"}`."""
    from plasticity.errors import check_positive

    check_positive("episodes", episodes)
    dev = resolve_device(device)
    model, cfg, ckpt = model_from_checkpoint(path, config_cls, device=str(dev), split=split, data_dir=data_dir)
    task = make_task(cfg, split)
    g = torch.Generator().manual_seed(seed)
    chunk = task_eval_chunk(task, cfg)
    batches = [task.sample(min(chunk, episodes - i), g) for i in range(0, episodes, chunk)]
    metrics = evaluate(model, task, batches, dev)
    if "accuracy" in metrics:
        # Normal approximation of the binomial 95% interval over the episodes.
        acc = metrics["accuracy"]
        metrics["accuracy_ci95"] = 1.96 * (acc * (1 - acc) / episodes) ** 0.5
    _completion_png(model, task, batches[0], dev, figure.parent, figure.name)
    return {"config": cfg, "episode": ckpt["episode"], "metrics": metrics, "figure": figure}
