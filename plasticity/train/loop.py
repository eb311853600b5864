"""The one training loop every task runs: `run_loop(cfg, algo, optimizer, ...)`.

A task's trainer (`episodic.py`, `a2c.py`) builds its model, data streams and
evaluation and hands them over as an `Algorithm`; this loop owns everything else, once:

  - the schedule: `--episodes` training episodes (the last batch is cut to fit), an
    evaluation every `--eval-every` episodes and at the end, the `--max-minutes`
    budget (counted over the whole run, across resumes);
  - checkpoints: every `--save-every` episodes, every `--save-minutes` of
    wall time, at the end, and when the run is stopped. A checkpoint holds everything
    the run needs to go on exactly as if it had not stopped: weights, optimiser,
    config, episode, history, the running training averages and every random stream
    (torch, numpy, python and the algorithm's own generators);
  - signals (`SignalPlan`): SIGTERM, SIGINT and SIGHUP, and the scheduler's warning
    that time is nearly up (SIGUSR1 by default): the current optimiser step finishes, a
    checkpoint is written and `Interrupted` is raised (the CLI exits 128 + the signal's
    number: 143, 130, 129, 138). With `on_warning="checkpoint"` the warning writes a
    checkpoint and training goes on. A second Ctrl-C stops at once;
  - the progress bar and the `report(step, metrics, files)` calls.

Resuming (`restore`) takes the config from the checkpoint; see `resume_config`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from plasticity.errors import ConfigError
from plasticity.train.checkpoint import load_checkpoint, save_checkpoint
from plasticity.train.common import Report, optimizer_step, record
from plasticity.train.optim import set_learning_rates


class Algorithm(Protocol):
    """What a task's trainer gives the loop."""

    model: torch.nn.Module

    def step(self, episodes: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Run `episodes` fresh training episodes; return (loss to backpropagate, per-episode
        statistics such as `train/loss`, averaged by the loop until the next evaluation)."""

    def evaluate(self, episode: int, run_dir: Path) -> tuple[dict[str, float], dict[str, Path]]:
        """Score the model on the held-out episodes: (prefixed metrics, figure files)."""

    def generators(self) -> dict[str, torch.Generator]:
        """The algorithm's own random streams (saved and restored with the checkpoint)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Anything else the checkpoint must hold (e.g. a data split)."""

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after an evaluation."""

    def finish(self, history: list[dict], run_dir: Path) -> None:
        """Called once at the end of a completed run (e.g. to draw the learning curve)."""


class Stopped(KeyboardInterrupt):
    """A run stopped by signal `signum`. `exit_code` is the shell convention (128 + signal
    number: 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP, 138 for SIGUSR1)."""

    def __init__(self, signum: int, message: str):
        super().__init__(f"stopped by {signal_name(signum)} {message}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Interrupted(Stopped):
    """Training was stopped by a signal after writing a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path, episode: int):
        super().__init__(signum, f"at episode {episode}; checkpoint {checkpoint}")
        self.checkpoint, self.episode = checkpoint, episode


# ----------------------------------------------------------------------- resuming

RESUMABLE_FIELDS = frozenset({"episodes", "batch_size", "lr", "eta_lr", "lr_schedule", "lr_final", "grad_clip",
                              "max_minutes", "eval_every", "eval_episodes", "save_every", "save_minutes", "device",
                              "out", "impl", "segment_steps", "data_dir"})
"""Fields a resumed run may change: the schedule and where and how it runs. Every other
field (task, model, rule, sizes, seed, ...) defines the run and comes from its checkpoint."""


def resume_config(cls, saved: dict[str, Any], requested=None, given: set[str] | None = None):
    """The config of a resumed run: the checkpoint's `saved` config, with the fields in
    `given` (the flags the user passed) taken from `requested`. `given=None` (library use)
    means the schedule fields of `requested`, as if they had all been passed. A field
    that defines the run, given with another value, is a `ConfigError` naming the flag.
    Returns (config, {field: (old, new)} of what changed)."""
    from plasticity.config import validate

    if saved.get("task") != cls().task:
        raise ConfigError(f"the checkpoint is a {saved.get('task')!r} run, not {cls().task!r}: "
                          f"resume it with `plasticity train {saved.get('task')} --resume ...`")
    base = cls.from_dict(saved)
    if requested is None:
        return base, {}
    if given is None:
        given = {f.name for f in fields(cls) if f.name in RESUMABLE_FIELDS}
    changes: dict[str, Any] = {}
    for name in sorted(given):
        old, new = getattr(base, name), getattr(requested, name)
        if old == new:
            continue
        if name not in RESUMABLE_FIELDS:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} cannot change when resuming (the run was started with {old!r}, the "
                              f"command asks for {new!r}): drop {flag}, or start a new run without --resume")
        changes[name] = (old, new)
    cfg = validate(type(base)(**{f.name: changes[f.name][1] if f.name in changes else getattr(base, f.name)
                                 for f in fields(base)}))
    return cfg, changes


def resume_summary(ckpt: dict, cfg, changes: dict[str, tuple]) -> str:
    """The one line a resumed run prints."""
    what = f"resuming at episode {ckpt['episode']} of {cfg.episodes}"
    if changes:
        what += " with " + ", ".join(f"{k}={new} (was {old})" for k, (old, new) in changes.items())
    if ckpt["episode"] >= cfg.episodes:
        what += " (the run is complete: pass --episodes N to train longer)"
    return what


# ----------------------------------------------------------------------- random streams

def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random stream, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "generators": {name: g.get_state().cpu() for name, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.set_state(state["generators"][name].to(g.get_state().device))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class StoppedBeforeTraining(Stopped):
    """A signal arrived before the first training step (e.g. while the fused C++ kernels
    were being built): nothing new to save."""


# ----------------------------------------------------------------------- signals

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals that stop a run with a checkpoint: a scheduler's or `kill`'s stop (SIGTERM),
Ctrl-C (SIGINT), the terminal going away (SIGHUP: an SSH session that drops)."""

WarningSignal = Literal["USR1", "USR2", "ALRM", "XCPU"]
"""Signals a scheduler can send as "time is nearly up" (Slurm `--signal=B:USR1@120`; some
batch systems send SIGUSR2 or SIGXCPU before the limit)."""


@dataclass(frozen=True)
class SignalPlan:
    """What a run does with signals: the stop signals always stop it with a checkpoint;
    the `warning` signal (time nearly up) stops it the same way (`on_warning="stop"`, so
    that a requeue script can test the exit code, 128 + its number) or writes a checkpoint
    and goes on (`"checkpoint"`, for a scheduler that only warns)."""

    warning: WarningSignal = "USR1"
    on_warning: Literal["stop", "checkpoint"] = "stop"

    @property
    def warning_signum(self) -> signal.Signals:
        return signal.Signals["SIG" + self.warning]

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        return (*STOP_SIGNALS, self.warning_signum)

    def stops(self, signum: int) -> bool:
        """Whether `signum` stops the run (rather than asking for a checkpoint)."""
        return signum != self.warning_signum or self.on_warning == "stop"


_plan = [SignalPlan()]


def current_signal_plan() -> SignalPlan:
    return _plan[-1]


@contextmanager
def signal_plan(plan: SignalPlan):
    """Runs started inside use `plan` (the CLI's --warning-signal / --on-warning; library
    users call it the same way). The default plan: the warning is SIGUSR1, and it stops."""
    _plan.append(plan)
    try:
        yield plan
    finally:
        _plan.remove(plan)


def signal_name(signum: int) -> str:
    """`SIGTERM`; the warning signal as `SIGUSR1 (time nearly up)`."""
    name = signal.Signals(signum).name
    return f"{name} (time nearly up)" if signum not in STOP_SIGNALS else name


@contextmanager
def raise_on_signals(during: str):
    """While active, the signals that stop a run raise `StoppedBeforeTraining` at once (a
    one-time setup such as a compile, which has nothing to checkpoint and can take a
    minute: a preempted job must not wait for it, nor die without a word). A warning that
    only asks for a checkpoint is ignored: there is none to write yet. Main thread only,
    as `stop_on_signals`."""
    plan = current_signal_plan()

    def handler(signum, frame):
        if plan.stops(signum):
            raise StoppedBeforeTraining(signum, during)

    with handling_signals(handler, plan.signals):
        yield


@contextmanager
def handling_signals(handler, signals):
    """`handler` takes `signals` while active, the previous handlers after; yields the
    function installed (to install again where a library took a signal over, as Ray's
    start does with SIGTERM), or None where nothing was. Only the main thread can take
    signals: elsewhere (a Ray Tune trial) this does nothing and the host handles them.
    The one place signal handlers are installed (runs and the sweep driver)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return

    def take(signum, frame):
        if signum == signal.SIGHUP:
            _drop_hung_up_output()
        handler(signum, frame)

    previous = {s: signal.signal(s, take) for s in signals}
    try:
        yield take
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _drop_hung_up_output() -> None:
    """Point stdout and stderr at /dev/null where writing to them fails: after SIGHUP from a
    terminal that went away (an SSH session that dropped), every write to it fails with
    EIO, and the next progress-bar update would end the run before its checkpoint."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


@contextmanager
def stop_on_signals():
    """While active, a signal that stops the run (`current_signal_plan`) sets
    `flag["signum"]` instead of killing the process (a second SIGINT raises
    KeyboardInterrupt at once); a warning that asks for a checkpoint sets
    `flag["checkpoint"]`. Only the main thread can take signals: elsewhere (a Ray Tune
    trial) this does nothing and the host handles them."""
    plan = current_signal_plan()
    flag: dict[str, int | None] = {"signum": None, "checkpoint": None}

    def handler(signum, frame):
        if not plan.stops(signum):
            flag["checkpoint"] = signum
            return
        if flag["signum"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if flag["signum"] is None:
            flag["signum"] = signum
            print(f"\nplasticity: {signal_name(signum)}: stopping after this step with a checkpoint"
                  + (" (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""),
                  file=sys.stderr)

    with handling_signals(handler, plan.signals):
        yield flag


# ----------------------------------------------------------------------- the loop

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


@dataclass
class LoopResult:
    history: list[dict]
    checkpoint: Path


def run_loop(cfg, algo: Algorithm, optimizer: torch.optim.Optimizer, *, run_dir: Path,
             report: Report | None = None, ckpt: dict | None = None, progress: bool = True,
             description: str = "") -> LoopResult:
    """Train `algo.model` until `cfg.episodes`, the time budget or a signal (module docstring).
    `ckpt` is the checkpoint being resumed (its weights and optimiser already loaded)."""
    ckpt_path = run_dir / "checkpoint.pt"
    generators = algo.generators()
    episode, history, averages = 0, [], Averages()
    loop = {}
    if ckpt is not None:
        episode, history = ckpt["episode"], list(ckpt.get("history", []))
        loop = ckpt.get("loop", {})
        averages = Averages(dict(loop.get("sums", {})), loop.get("episodes", 0))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"], generators)
        else:  # written before the loop saved every stream: the algorithm's own ones
            for name, g in generators.items():
                g.set_state(ckpt[name].to(g.get_state().device))
        # The history as of the checkpoint: evaluations written after it (a SIGKILL) are redone.
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    # Wall time spent on this run (training and evaluation), carried across resumes.
    elapsed_before = loop.get("elapsed_s", history[-1].get("perf/elapsed_s", 0.0) if history else 0.0)
    t_start = time.perf_counter()
    rate_since = [t_start, episode]
    saved_at = [episode if ckpt is not None else None, t_start]

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def checkpoint() -> Path:
        if saved_at[0] != episode:
            loop_state = {"sums": averages.sums, "episodes": averages.episodes, "elapsed_s": elapsed()}
            save_checkpoint(ckpt_path, model=algo.model, optimizer=optimizer, config=cfg.to_dict(), episode=episode,
                            extra={"history": history, "loop": loop_state, "rng": rng_state(generators),
                                   **algo.checkpoint_extra()})
            saved_at[0] = episode
        saved_at[1] = time.perf_counter()
        return ckpt_path

    def evaluate() -> None:
        now = time.perf_counter()
        metrics = averages.means()
        metrics["perf/episodes_per_s"] = (episode - rate_since[1]) / max(now - rate_since[0], 1e-9)
        metrics["perf/elapsed_s"] = elapsed()
        metrics["train/lr"] = optimizer.param_groups[0]["lr"]
        scores, files = algo.evaluate(episode, run_dir)
        metrics.update(scores)
        record(history, run_dir, episode, metrics)
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
    algo.finish(history, run_dir)
    return LoopResult(history, ckpt_path)


def restore_checkpoint(path, cls, requested=None, given: set[str] | None = None):
    """(config, checkpoint, changes) for resuming from `path` (see `resume_config`)."""
    ckpt = load_checkpoint(path)
    cfg, changes = resume_config(cls, ckpt["config"], requested, given)
    return cfg, ckpt, changes
