"""One training run from start to end: `train(cfg, report) -> TrainResult`, for every task.

    from plasticity.config import preset
    from plasticity.train import train
    result = train(preset("patterns", "small"), report=lambda step, metrics, files: print(step, metrics))
    longer = train(preset("patterns", "small", episodes=2000), resume=result.checkpoint)

The command line (`plasticity train`), a sweep trial (`tune/trainable.py`) and library
users all go through `train`, which owns everything a run is besides its algorithm:

- resuming (`resume=`): the config comes from the checkpoint and only the schedule may
  change (`resume_config`); weights, optimiser state, the loop's counters and every
  random stream go on from it, so the run ends as if it had not stopped;
- the run folder: a new one under `cfg.out` (`run_name`), or the resumed checkpoint's,
  holding `config.json`, `checkpoint.pt`, `metrics.jsonl` and the figures. It is made
  only once the algorithm is built and the checkpoint restored, so that a missing data
  file or a damaged checkpoint leaves nothing behind;
- the random streams: python, numpy and torch seeded in one place (`seed_everything`)
  and saved with every checkpoint with the algorithm's own generators (`rng_state`);
- signals (`plasticity.train.signals`): the plan (`signals=`); before training a stop is
  immediate, during it the loop checkpoints first; with `again=` the run says in one
  line how to go on;
- the tracker (`tracking=`, `plasticity.tracking.session.MlflowSession` for MLflow):
  checked before the folder is made (after the data and the checkpoint), opened once it
  is (the same tracking run again when resuming), sent every report, and closed
  FINISHED, KILLED or FAILED.

The algorithm (`plasticity.train.algorithm`, chosen by `type(cfg).trainer`) builds the
task and the model and says how to step and evaluate; `plasticity.train.loop` says when.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from plasticity.errors import ConfigError, StorageError
from plasticity.models import count_parameters
from plasticity.tasks import make_task
from plasticity.train.algorithm import Algorithm, algorithm_for
from plasticity.train.checkpoint import load_checkpoint, save_checkpoint
from plasticity.train.common import Report, resolve_device, restore_state
from plasticity.train.loop import run_loop
from plasticity.train.optim import make_optimizer
from plasticity.train.signals import (
    Interrupted,
    SignalPlan,
    StoppedBeforeTraining,
    raise_on_signals,
    signal_name,
    signal_plan,
)


@dataclass
class TrainResult:
    model: torch.nn.Module
    run_dir: Path
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    """One dict per evaluation: `{"step": episodes, **metrics}`."""

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


class Tracking(Protocol):
    """Where a run is recorded beyond its folder (`plasticity.tracking.session.MlflowSession`).
    `train` calls `check` before it makes the run folder, `open` once the folder and the
    final config are known, `stopped` when a signal stopped the run after a checkpoint,
    and `close` at the end."""

    def check(self) -> None:
        """Fail fast, with a `PlasticityError` naming the fix, if the store cannot be used."""

    def open(self, cfg, run_dir: Path) -> Report:
        """Open the run's record (the one recorded in `run_dir` when resuming); returns the
        report every evaluation goes to."""

    def stopped(self, again: str) -> None:
        """The run stopped with a checkpoint; `again` is the command that continues it."""

    def close(self, status: str, result: TrainResult | None = None) -> None:
        """End the record: `FINISHED` with the run's `result`, or `KILLED` / `FAILED`."""


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


# ----------------------------------------------------------------------- the run folder

def run_name(cfg) -> str:
    """`{task}__{model}__{rule}__{seed}__{time}`, as in CleanRL (rule `none` for a network
    without plasticity)."""
    rule = cfg.rule if cfg.plastic else "none"
    return f"{cfg.task}__{cfg.model}__{rule}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def is_run_dir(folder: Path) -> bool:
    """A folder `plasticity train` made (it holds the run's config.json)."""
    return (folder / "config.json").is_file()


def open_run_dir(cfg, run_dir=None) -> Path:
    """The run folder (a new one under `cfg.out` unless given) with `config.json` written;
    an unwritable place is a `StorageError` naming the folder."""
    try:
        if run_dir is None:
            base = Path(cfg.out) / run_name(cfg)
            run_dir, n = base, 1
            while run_dir.exists():
                run_dir, n = Path(f"{base}-{n}"), n + 1
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    except OSError as e:
        where = run_dir if run_dir is not None else cfg.out
        raise StorageError(f"cannot write the run folder under {where} ({e.strerror or e}): pass --out with a "
                           "writable folder") from None
    return run_dir


# ----------------------------------------------------------------------- random streams

def seed_everything(seed: int) -> None:
    """Seed `random`, `numpy` and `torch` (all devices) in one place."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# ----------------------------------------------------------------------- the run

@dataclass
class Run:
    """A run's state: its final config, the checkpoint it goes on from (`resumed`, read
    from `source`; None for a new run) and, once made, its folder. The loop saves and
    resumes through it (`plasticity.train.loop.RunState`)."""

    cfg: Any
    resumed: dict | None = None
    source: str | Path | None = None
    changes: dict[str, tuple] = field(default_factory=dict)
    dir: Path | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def restore(self, algo: Algorithm, optimizer: torch.optim.Optimizer) -> None:
        """Load the resumed checkpoint's weights and optimiser state into `algo`'s model and
        `optimizer`; a checkpoint they do not fit, or whose task state (a data split) the
        task cannot go on from, is a one-line `CheckpointError`."""
        if self.resumed is not None:
            algo.task.check_state(self.resumed.get("task_state"), str(self.source))
            restore_state(algo.model, optimizer, self.resumed, self.source)

    def open_folder(self, run_dir=None) -> Path:
        """Make the run folder: `run_dir` if given; for a resumed run the checkpoint's own
        folder, unless `--out` changed or the checkpoint is a loose file; else a new one."""
        if self.resumed is not None and run_dir is None:
            folder = Path(self.source).parent
            if "out" not in self.changes and is_run_dir(folder) and Path(self.source).name == "checkpoint.pt":
                run_dir = folder
        self.dir = open_run_dir(self.cfg, run_dir)
        return self.dir

    def resume_line(self) -> str:
        where = "" if self.dir == Path(self.source).parent else f", in the new run folder {self.dir}"
        return f"plasticity: {resume_summary(self.resumed, self.cfg, self.changes)}{where}"

    def resume_point(self, generators: dict[str, torch.Generator]) -> tuple[int, dict[str, Any]] | None:
        """(episode, the loop's saved progress) of the resumed checkpoint, with every random
        stream and the metrics file put back to it; None for a new run."""
        ckpt = self.resumed
        if ckpt is None:
            return None
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"], generators)
        else:  # written before the loop saved every stream: the algorithm's own ones
            for name, g in generators.items():
                g.set_state(ckpt[name].to(g.get_state().device))
        history = list(ckpt.get("history", []))
        # The history as of the checkpoint: evaluations written after it (a SIGKILL) are redone.
        (self.dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        return ckpt["episode"], {"history": history, "loop": ckpt.get("loop", {})}

    def save(self, algo: Algorithm, optimizer: torch.optim.Optimizer, episode: int, progress: dict[str, Any]) -> Path:
        """Write everything the run needs to go on exactly as if it had not stopped: weights,
        optimiser, config, episode, the loop's `progress`, every random stream and the
        algorithm's own state."""
        return save_checkpoint(self.checkpoint_path, model=algo.model, optimizer=optimizer, config=self.cfg.to_dict(),
                               episode=episode, extra={**progress, "rng": rng_state(algo.generators()),
                                                       **algo.checkpoint_extra()})

    def record(self, entry: dict[str, Any]) -> None:
        """Append one evaluation to the run's `metrics.jsonl`."""
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")


def start_run(cfg, resume: str | Path | None = None, given: set[str] | None = None) -> Run:
    """The run `cfg` describes, before anything is built or written: a new one, or the one
    checkpoint `resume` continues (read and checked; its config from `resume_config`)."""
    if resume is None:
        return Run(cfg)
    ckpt = load_checkpoint(resume)
    cfg, changes = resume_config(type(cfg), ckpt["config"], cfg, given)
    return Run(cfg, ckpt, resume, changes)


def preflight(cfg) -> None:
    """Fail fast, with one `PlasticityError`, on what would stop training at its start (a
    missing or corrupt data file, an impossible maze): builds the task once (its data is
    read and cached). `train` needs no preflight; a sweep checks before its first trial."""
    make_task(cfg)


# ----------------------------------------------------------------------- train

def train(cfg, report: Report | None = None, *, resume: str | Path | None = None, progress: bool = True,
          run_dir: str | Path | None = None, given: set[str] | None = None, tracking: Tracking | None = None,
          signals: SignalPlan | None = None, announce: bool | None = None,
          again: Callable[[str | Path], str] | None = None) -> TrainResult:
    """Train the model `cfg` describes with its task's algorithm (module docstring).

    `report(step, metrics, files)` is called at every evaluation (after the tracker's).
    `resume`: a checkpoint to go on from; `given`: the fields the user asked to change
    (None: the schedule's, `resume_config`). `run_dir`: the run folder (default: new under
    `cfg.out`, or the resumed checkpoint's). `tracking`: opens the run's tracking record.
    `signals`: the signal plan (default: the current one, `signal_plan`). `announce`: say
    the resume line (default: with `progress`). `again(checkpoint)`: the command that
    continues the run from `checkpoint`; with it, a stopped run prints the line that says
    how to go on (and, tracked, tags its record with it)."""
    announce = progress if announce is None else announce
    run, opened = None, False
    with signal_plan(signals) if signals is not None else nullcontext():
        try:
            # Before training a signal stops at once (nothing to save yet); while the loop
            # trains it takes the signals over and checkpoints first (`stop_on_signals`).
            with raise_on_signals("before training"):
                run = start_run(cfg, resume, given)
                algo, optimizer = _build(run, progress)
                if tracking is not None:
                    tracking.check()
                run.open_folder(run_dir)
                if announce and run.resumed is not None:
                    print(run.resume_line(), file=sys.stderr)
                tracked = tracking.open(run.cfg, run.dir) if tracking is not None else None
                opened = tracked is not None
                algo.prepare()
                description = f"{run.cfg.task}/{run.cfg.model} ({count_parameters(algo.model):,} params)"
                loop = run_loop(run, algo, optimizer, report=_each(tracked, report), progress=progress,
                                description=description)
        except BaseException as e:
            if again is not None:
                _say_stopped(e, run, resume, again, tracking if opened else None)
            if opened:
                tracking.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
    result = TrainResult(algo.model, run.dir, loop.checkpoint, loop.history)
    if opened:
        tracking.close("FINISHED", result)
    return result


def _build(run: Run, progress: bool) -> tuple[Algorithm, torch.optim.Optimizer]:
    """The run's algorithm (its task, model and random streams, after seeding) and
    optimiser, with the resumed checkpoint's state loaded."""
    device = resolve_device(run.cfg.device)
    seed_everything(run.cfg.seed)
    algo = algorithm_for(run.cfg)(run.cfg, device, progress=progress)
    optimizer = make_optimizer(algo.model, run.cfg)
    run.restore(algo, optimizer)
    return algo, optimizer


def _each(*reports: Report | None) -> Report | None:
    """One report that calls each of `reports` in turn (None where there is none)."""
    reports = tuple(r for r in reports if r is not None)
    if len(reports) <= 1:
        return reports[0] if reports else None

    def report(step: int, metrics: dict[str, float], files: dict[str, Path]) -> None:
        for each in reports:
            each(step, metrics, files)

    return report


def _say_stopped(e: BaseException, run: Run | None, resume, again: Callable[[str | Path], str],
                 tracking: Tracking | None) -> None:
    """The one line a stopped run prints: how to go on (`again`), and whether anything was saved."""
    if isinstance(e, Interrupted):
        command = again(e.checkpoint)
        if tracking is not None:
            tracking.stopped(command)
        print(f"plasticity: stopped by {signal_name(e.signum)} at episode {e.episode}; checkpoint saved: "
              f"continue with `{command}`", file=sys.stderr)
    elif isinstance(e, StoppedBeforeTraining):
        how = f"`{again(resume)}`" if resume else "the same command again"
        print(f"plasticity: {e}: nothing new to save; to go on, run {how}", file=sys.stderr)
    elif isinstance(e, KeyboardInterrupt):  # a second Ctrl-C: at once, without a checkpoint
        last = run.checkpoint_path if run is not None and run.dir is not None else resume
        print("plasticity: stopped at once; " + (f"continue from the last checkpoint with `{again(last)}`"
                                                  if last else "run the same command again"), file=sys.stderr)
