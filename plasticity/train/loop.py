"""The schedule every algorithm trains on: `run_loop(run, algo, optimizer, report=...)`.

The run (`plasticity.train.run`) builds the algorithm (`plasticity.train.algorithm`)
and hands it over with its own state; this loop says *when*, once for every task:

  - the schedule: `--episodes` training episodes (the last batch is cut to fit), an
    evaluation every `--eval-every` episodes and at the end, the `--max-minutes`
    budget (counted over the whole run, across resumes);
  - checkpoints: every `--save-every` episodes, every `--save-minutes` of wall time, at
    the end, when the loss diverges and when the run is stopped. What a checkpoint holds
    and how a run goes on from one are the run's (`RunState`); the loop adds its own
    counters (the history, the running training averages, the time spent);
  - signals (`plasticity.train.signals.stop_on_signals`): a stop lets the current
    optimiser step finish, writes a checkpoint and raises `Interrupted`; a warning that
    only asks for a checkpoint writes one and training goes on; a second Ctrl-C stops at once;
  - the progress bar and the `report(step, metrics, files)` calls.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from plasticity.train.algorithm import Algorithm
from plasticity.train.common import Report, TrainingDiverged
from plasticity.train.optim import set_learning_rates
from plasticity.train.signals import Interrupted, signal_name, stop_on_signals


class RunState(Protocol):
    """What the loop needs of the run it trains (`plasticity.train.run.Run`)."""

    cfg: Any
    dir: Path
    checkpoint_path: Path

    def resume_point(self, generators: dict[str, torch.Generator]) -> tuple[int, dict[str, Any]] | None:
        """Where a resumed run goes on: (episode, the `progress` the loop saved), with every
        random stream and the run's metrics file put back to that point; None: a new run."""

    def save(self, algo: Algorithm, optimizer: torch.optim.Optimizer, episode: int, progress: dict[str, Any]) -> Path:
        """Write the checkpoint at `episode`, with the loop's `progress`; returns its path."""

    def record(self, entry: dict[str, Any]) -> None:
        """Append one evaluation (`{"step", **metrics}`) to the run's metrics file."""


@dataclass
class Averages:
    """Training statistics summed since the last evaluation (saved with the checkpoint,
    so the first evaluation after a resume averages the same episodes)."""

    sums: dict[str, float] = field(default_factory=dict)
    episodes: int = 0

    def add(self, stats: dict[str, float], n: int) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.episodes += n

    def means(self) -> dict[str, float]:
        return {k: v / self.episodes for k, v in self.sums.items()} if self.episodes else {}


def passed_multiple(previous: int, now: int, every: int) -> bool:
    """True when the episode count passed a multiple of `every` this step."""
    return now // every > previous // every


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


@dataclass
class LoopResult:
    history: list[dict]
    checkpoint: Path


def run_loop(run: RunState, algo: Algorithm, optimizer: torch.optim.Optimizer, *, report: Report | None = None,
             progress: bool = True, description: str = "") -> LoopResult:
    """Train `algo.model` until `run.cfg.episodes`, the time budget or a signal (module
    docstring). A resumed run's weights and optimiser state are already loaded."""
    cfg = run.cfg
    episode, history, averages, loop = 0, [], Averages(), {}
    resumed = run.resume_point(algo.generators())
    if resumed is not None:
        episode, state = resumed
        history, loop = list(state.get("history", [])), state.get("loop", {})
        averages = Averages(dict(loop.get("sums", {})), loop.get("episodes", 0))
    # Wall time spent on this run (training and evaluation), carried across resumes.
    elapsed_before = loop.get("elapsed_s", history[-1].get("perf/elapsed_s", 0.0) if history else 0.0)
    t_start = time.perf_counter()
    rate_since = [t_start, episode]
    saved_at = [episode if resumed is not None else None, t_start]

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def checkpoint() -> Path:
        if saved_at[0] != episode:
            loop_state = {"sums": averages.sums, "episodes": averages.episodes, "elapsed_s": elapsed()}
            run.save(algo, optimizer, episode, {"history": history, "loop": loop_state})
            saved_at[0] = episode
        saved_at[1] = time.perf_counter()
        return run.checkpoint_path

    def evaluate() -> None:
        now = time.perf_counter()
        metrics = averages.means()
        metrics["perf/episodes_per_s"] = (episode - rate_since[1]) / max(now - rate_since[0], 1e-9)
        metrics["perf/elapsed_s"] = elapsed()
        metrics["train/lr"] = optimizer.param_groups[0]["lr"]
        scores, files = algo.evaluate(episode, run.dir)
        metrics.update(scores)
        history.append({"step": episode, **metrics})
        run.record(history[-1])
        averages.sums, averages.episodes = {}, 0
        if passed_multiple(previous, episode, cfg.save_every) or episode >= cfg.episodes or out_of_time:
            files["checkpoint"] = checkpoint()
        bar.set_postfix(algo.postfix(metrics))
        if report is not None:
            report(episode, metrics, files)
        rate_since[:] = [time.perf_counter(), episode]

    budget_s = None if cfg.max_minutes is None else 60 * cfg.max_minutes - elapsed_before
    bar = tqdm(total=cfg.episodes, initial=min(episode, cfg.episodes), unit="ep", disable=not progress,
               dynamic_ncols=True, desc=description)
    previous, out_of_time = episode, False
    with stop_on_signals() as stop:
        while episode < cfg.episodes:
            n = min(cfg.batch_size, cfg.episodes - episode)
            loss, stats = algo.step(n)
            set_learning_rates(optimizer, cfg, episode)
            optimizer_step(loss, algo.model, optimizer, cfg.grad_clip, episode, checkpoint)
            previous, episode = episode, episode + n
            averages.add(stats, n)
            bar.update(n)
            out_of_time = budget_s is not None and time.perf_counter() - t_start >= budget_s
            if passed_multiple(previous, episode, cfg.eval_every) or episode >= cfg.episodes or out_of_time:
                evaluate()
            elif passed_multiple(previous, episode, cfg.save_every):
                checkpoint()
            if stop["signum"] is not None:
                path = checkpoint()
                bar.close()
                raise Interrupted(stop["signum"], path, episode)
            if stop["checkpoint"] is not None:
                path = checkpoint()
                tqdm.write(f"plasticity: {signal_name(stop['checkpoint'])}: checkpoint at episode {episode} in "
                           f"{path}; training goes on", file=sys.stderr)
                stop["checkpoint"] = None
            if out_of_time:
                break
            if cfg.save_minutes is not None and time.perf_counter() - saved_at[1] >= 60 * cfg.save_minutes:
                checkpoint()
    bar.close()
    checkpoint()
    algo.finish(history, run.dir)
    return LoopResult(history, run.checkpoint_path)
