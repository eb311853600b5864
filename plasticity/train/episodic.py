"""Supervised episodic training: the `episodic` algorithm (`EpisodicAlgorithm`).

Each optimiser step draws `batch_size` fresh episodes, runs the network through them
from a zero state, and backpropagates the task loss through the whole episode into
w, alpha and eta (Adam). Every `eval_every` episodes the model is scored on a fixed
set of held-out episodes (`HeldOut`, drawn from `seed + EVAL_SEED_OFFSET`) and the
task's figure of the first one is drawn. The run around it (folder, checkpoints,
resume, reports) is `plasticity.train.run.train`'s:

    from plasticity.config import preset
    from plasticity.train import train
    result = train(preset("patterns", "small"), report=lambda step, m, files: print(step, m))
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from plasticity.models import SequenceModel, count_parameters
from plasticity.plots import learning_curve_png, save_figure
from plasticity.tasks import make_task
from plasticity.train.algorithm import register_algorithm
from plasticity.train.common import (
    EVAL_SEED_OFFSET,
    eval_progress,
    model_from_checkpoint,
    plastic_summary,
    resolve_device,
    to_device,
)

CI95_Z = 1.96
"""Normal quantile of the two-sided 95% interval."""


@torch.no_grad()
def evaluate(model: SequenceModel, task, episodes, device, batch_size: int = 64,
             progress: bool = False) -> dict[str, float]:
    """Mean of the task's metrics over held-out `episodes` (an iterable of batches; with
    `progress`, a `HeldOut` shows a bar with the time left on a terminal).

    Tasks with per-episode values (`episode_metrics(outputs, batch) -> {name: [B]}`) also
    get `{name}_ci95`: the half-width of the 95% interval of the mean, `1.96 x std / sqrt(n)`
    over the n episodes (episodes are independent; the bits within one are not, so the
    interval is taken over episodes, not bits)."""
    model.eval()
    totals: dict[str, float] = {}
    values: dict[str, list[torch.Tensor]] = {}
    count = 0
    bar = eval_progress(getattr(episodes, "episodes", None), progress)
    for ep in episodes:
        outputs, _ = model(to_device(task.inputs(ep), device))
        n = outputs.shape[0]
        bar.update(n)
        per_episode = task.episode_metrics(outputs, ep)
        if per_episode is not None:
            for k, v in per_episode.items():
                values.setdefault(k, []).append(v.detach().double().cpu())
        else:
            for k, v in task.metrics(outputs, ep).items():
                totals[k] = totals.get(k, 0.0) + v * n
        count += n
    bar.close()
    model.train()
    if not values:
        return {k: v / count for k, v in totals.items()}
    metrics = {}
    for k, chunks in values.items():
        v = torch.cat(chunks)
        metrics[k] = float(v.mean())
        metrics[f"{k}_ci95"] = CI95_Z * float(v.std()) / len(v) ** 0.5 if len(v) > 1 else float("nan")
    return metrics


def eval_chunk(n_neurons: int, cap: int = 256) -> int:
    """Episodes per no-grad evaluation batch: about 16 MB of Hebb `[B, N, N]` per batch.
    Measured at N = 1001 on 2 cores: 32 episodes take 3.1 s in batches of 4, 16 s in
    one batch of 32 (the larger batch falls out of cache)."""
    return max(1, min(cap, (1 << 22) // (n_neurons * n_neurons)))


EVAL_BATCH_BYTES = 256 << 20
"""Most bytes of inputs and activations (`TaskConfig.step_floats` per step) an evaluation
batch may hold: long episodes are scored a few at a time."""


def task_eval_chunk(task, cfg) -> int:
    """Evaluation batch size: the task's own choice, else sized by the Hebb tensor; fewer
    episodes when they are long (`EVAL_BATCH_BYTES`)."""
    chunk = task.eval_chunk or eval_chunk(task.n_io + cfg.extra_neurons)
    return max(1, min(chunk, EVAL_BATCH_BYTES // (4 * cfg.steps() * cfg.step_floats())))


class HeldOut:
    """The fixed held-out episodes, drawn from `seed + EVAL_SEED_OFFSET` in batches of
    `chunk`: an iterable that yields the same batches every time. Kept in memory when
    small; otherwise drawn again at each pass (512 reference pattern episodes would hold
    217 MB of inputs; drawing them takes a fraction of the time running them does)."""

    KEEP_BYTES = 64 << 20

    def __init__(self, task, episodes: int, seed: int, chunk: int):
        self.task, self.seed = task, seed
        self.sizes = [min(chunk, episodes - i) for i in range(0, episodes, chunk)]
        self.episodes = episodes
        self.kept = None
        first = self.first()
        inputs = task.inputs(first)
        nbytes = sum(t.nbytes for t in (inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
        if nbytes * len(self.sizes) <= self.KEEP_BYTES:
            self.kept = list(self._draw())

    def _draw(self):
        g = torch.Generator().manual_seed(self.seed)
        for n in self.sizes:
            yield self.task.sample(n, g)

    def first(self):
        """The first batch (for figures)."""
        return self.kept[0] if self.kept is not None else next(self._draw())

    def __iter__(self):
        return iter(self.kept) if self.kept is not None else self._draw()

    def __len__(self) -> int:
        return len(self.sizes)


def heldout_episodes(task, cfg, chunk: int | None = None) -> HeldOut:
    """The fixed held-out episodes, drawn from `seed + EVAL_SEED_OFFSET`, in batches."""
    chunk = chunk or task_eval_chunk(task, cfg)
    return HeldOut(task, cfg.eval_episodes, cfg.seed + EVAL_SEED_OFFSET, chunk)


def prepare_kernels(cfg, device: torch.device) -> None:
    """Build the fused C++ kernels the run will use before the training clock starts (a
    one-time compile that says so on stderr, then cached on disk; `plasticity.nn.fused.prepare`
    decides whether there are any). SIGTERM / SIGINT during it stop the run at once with
    `StoppedBeforeTraining` (the compiler is killed; the next run builds again)."""
    from plasticity.nn.fused import prepare
    from plasticity.train.signals import raise_on_signals

    with raise_on_signals("while building the fused C++ kernels, before training"):
        prepare(cfg, device)


def _completion_png(model, task, episode, device, run_dir: Path, name: str = "completion.png") -> Path:
    """The task's figure of the first episode of `episode` and the model's answer."""
    with torch.no_grad():
        outputs, _ = model(to_device(task.inputs(episode), device))
    path = run_dir / name
    save_figure(task.figure(outputs, episode), path)
    return path


def evaluate_checkpoint(path: str | Path, config_cls, *, episodes: int, seed: int, figure: Path,
                        device: str = "cpu", split: str = "test", data_dir: str | None = None,
                        progress: bool = True) -> dict:
    """Score a checkpoint on `episodes` fresh episodes drawn from `seed` (from the data
    split `split` for tasks with data); write its figure. Accuracies and per-episode
    metrics get a 95% interval (`*_ci95`); learned plasticity values are included.
    `progress`: a bar with the time left on a terminal, once the scoring takes a while.

    Returns `{"config", "episode", "metrics", "figure"}`."""
    from plasticity.config import check_evaluation
    from plasticity.errors import check_positive

    check_positive("episodes", episodes)
    dev = resolve_device(device)
    model, cfg, ckpt = model_from_checkpoint(path, config_cls, device=str(dev), split=split, data_dir=data_dir)
    check_evaluation(cfg, episodes, "--episodes")
    task = make_task(cfg, split)
    batches = HeldOut(task, episodes, seed, task_eval_chunk(task, cfg))
    metrics = evaluate(model, task, batches, dev, progress=progress)
    if "accuracy" in metrics:
        # Normal approximation of the binomial 95% interval over the episodes.
        acc = metrics["accuracy"]
        metrics["accuracy_ci95"] = 1.96 * (acc * (1 - acc) / episodes) ** 0.5
    # The learned plasticity parameters as values (eta, not the parameter behind it).
    metrics.update(plastic_summary(model, cfg))
    _completion_png(model, task, batches.first(), dev, figure.parent, figure.name)
    return {"config": cfg, "episode": ckpt["episode"], "metrics": metrics, "figure": figure}


@register_algorithm
class EpisodicAlgorithm:
    """Supervised episodes (`plasticity.train.algorithm.Algorithm`): the task's model
    trained on its loss, scored on the held-out episodes."""

    name = "episodic"

    def __init__(self, cfg, device: torch.device, progress: bool = False):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.task = make_task(cfg)
        self.model: SequenceModel = self.task.build_model(cfg).to(device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.heldout = heldout_episodes(self.task.heldout(), cfg)

    def prepare(self) -> None:
        prepare_kernels(self.cfg, self.device)

    def step(self, episodes: int):
        batch = self.task.sample(episodes, self.generator)
        outputs, _ = self.model(to_device(self.task.inputs(batch), self.device))
        loss = self.task.loss(outputs, batch)
        return loss, {"train/loss": loss.item()}

    def evaluate(self, episode: int, run_dir: Path):
        t_eval = time.perf_counter()
        scores = evaluate(self.model, self.task, self.heldout, self.device, progress=self.progress)
        metrics = {f"eval/{k}": v for k, v in scores.items()}
        metrics["perf/eval_s"] = time.perf_counter() - t_eval
        metrics.update(plastic_summary(self.model, self.cfg))
        metrics["model/params"] = count_parameters(self.model)
        figure = _completion_png(self.model, self.task, self.heldout.first(), self.device, run_dir)
        return metrics, {"completion": figure}

    def generators(self) -> dict[str, torch.Generator]:
        return {"generator": self.generator}

    def checkpoint_extra(self) -> dict:
        return {"task_state": self.task.state()}

    def headline(self, metrics: dict[str, float]) -> str:
        """The task's headline metric's name (`TASK.headline`, else its first metric but the loss)."""
        if self.task.headline:
            return self.task.headline
        names = [k.removeprefix("eval/") for k in metrics
                 if k.startswith("eval/") and k != "eval/loss" and not k.endswith("_ci95")]
        return names[0] if names else "loss"

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        name = self.headline(metrics)
        return {"loss": f"{metrics.get('train/loss', float('nan')):.4f}",
                name: f"{metrics.get(f'eval/{name}', float('nan')):.4f}"}

    def finish(self, history: list[dict], run_dir: Path) -> None:
        last = history[-1] if history else {}
        others = [k for k in last if k.startswith("eval/") and not k.endswith("_ci95") and k != "eval/loss"]
        shown = dict.fromkeys([f"eval/{self.headline(last)}", *others, "eval/loss"])
        learning_curve_png(history, run_dir, (*list(shown)[:2], "eval/loss"), ylabel="held-out value")

    evaluate_checkpoint = staticmethod(evaluate_checkpoint)


__all__ = ["EpisodicAlgorithm", "HeldOut", "evaluate", "evaluate_checkpoint"]
