"""What a config costs in memory and time, and the checks that refuse, in one line and
before anything is allocated, a run or an evaluation that cannot fit or cannot end.

Each task's config says what one episode holds (`TaskConfig.neurons`, `steps`,
`step_floats`, `step_work`, `heldout_bytes`, `fixed_bytes`); from those:

  - `check_memory(cfg)`: the weights with Adam's moments, per episode of a batch its
    Hebb matrices and its time series (inputs and the activations kept for the backward
    pass; with step-by-step autograd, a Hebb matrix per kept step), and what the task
    holds once (a maze's grid and figures) must fit in RAM;
  - `check_evaluation(cfg, episodes, flag)`: an evaluation of `episodes` held-out
    episodes must fit (what it keeps per episode) and end in sane time
    (`MAX_EVAL_WORK` multiply-adds).

The estimates are rough lower bounds: they catch a typed-in 10**9, not a run that is a
little too large (that one fails at its first allocation, as `plasticity.cli` says).
"""

from __future__ import annotations

import math
import os

from plasticity.errors import ConfigError

FLOAT_BYTES = 4
"""float32."""

MAX_EVAL_WORK = 10**14
"""Most multiply-adds one evaluation may take: about a day on 2 CPU cores (measured here:
32 reference pattern episodes, 106 steps at 1001 neurons, in 3.1 s, ~1.1e9 per second),
minutes on a GPU. Beyond it an evaluation is a typo, not a measurement."""

STEP_OVERHEAD = 50_000
"""Multiply-adds counted for every step of every episode besides the model's own (the
Python and dispatch cost of a step, which dominates for tiny networks: the `small`
patterns preset, 51 neurons and 11 steps, evaluated at 0.5 ms of CPU per episode here)."""


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def kept_steps(cfg) -> int:
    """Hebb matrices one training episode keeps for its backward pass: one with the fused
    kernels (the backward pass rebuilds Hebb), one per step with step-by-step autograd
    (fewer with --segment-steps: a segment's steps plus a state per segment)."""
    if getattr(cfg, "impl", "fused") == "fused" or not cfg.plastic:
        return 1
    steps, segment = cfg.steps(), getattr(cfg, "segment_steps", 0)
    return steps if not segment else min(steps, segment + math.ceil(steps / segment))


def episode_bytes(cfg) -> int:
    """Bytes one training episode holds (lower bound): Hebb and its gradient-sized
    companions (4 N x N), the kept Hebb matrices, and the time series."""
    n = cfg.neurons()
    return FLOAT_BYTES * (n * n * (3 + kept_steps(cfg)) + cfg.steps() * cfg.step_floats())


def describe_episode(cfg) -> str:
    return f"{cfg.neurons()} neurons, {cfg.steps()} steps per episode, batch {cfg.batch_size}"


def check_memory(cfg) -> None:
    """Refuse sizes whose weights (float32 with Adam's two moments) and batch of episodes
    (`episode_bytes`) cannot fit in this machine's memory, before anything is allocated."""
    n = cfg.neurons()
    need = FLOAT_BYTES * n * n * 3 * 3 + cfg.batch_size * episode_bytes(cfg) + cfg.fixed_bytes()
    have = physical_memory()
    if have and need > have:
        raise ConfigError(f"this model needs at least {need / 2**30:.0f} GiB ({describe_episode(cfg)}) and this "
                          f"machine has {have / 2**30:.0f} GiB: lower the sizes, the episode length or --batch-size")


def eval_work(cfg, episodes: int) -> int:
    """Multiply-adds of scoring `episodes` episodes (the model's forward pass and a floor
    per step for everything around it)."""
    return episodes * cfg.steps() * (cfg.step_work() + STEP_OVERHEAD)


def check_evaluation(cfg, episodes: int, flag: str = "--eval-episodes") -> None:
    """Refuse an evaluation of `episodes` episodes that cannot fit in memory (what it keeps
    per episode, `heldout_bytes`) or would take far too long (`MAX_EVAL_WORK`); `flag`
    names the option that set the count."""
    per_episode = eval_work(cfg, 1)
    most = MAX_EVAL_WORK // per_episode
    have = physical_memory()
    if have:
        most = min(most, have // 2 // cfg.heldout_bytes())
    if episodes > most:
        work = eval_work(cfg, episodes)
        raise ConfigError(f"{flag} {episodes} is too many for one evaluation (about {work:.1e} multiply-adds, "
                          f"~{work / 1e9 / 86400:,.0f} days at 1e9 per second; {cfg.neurons()} neurons, "
                          f"{cfg.steps()} steps per episode): pass {flag} {max(1, most)} or fewer")
