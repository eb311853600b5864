"""Configuration dataclasses: one object flows to the CLI, Ray Tune, MLflow and checkpoints.

Each task has one flat dataclass (flat so that CLI flags, sweep parameters, MLflow
params and checkpoint keys are the same names); it is assembled from the shared
`ModelConfig` and `TrainConfig` plus the task's own fields. Named presets give the
task's published settings; any field can be overridden after choosing a preset.

    cfg = preset("patterns", "small", episodes=500)
    cfg.to_dict(); PatternsConfig.from_dict(d)
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from plasticity.errors import ConfigError, check_choice, check_eta, check_positive
from plasticity.nn import ALPHA_MODES, ETA_MODES
from plasticity.rules import RULES

MODELS = ("plastic", "rnn", "lstm")


@dataclass
class ModelConfig:
    """The network: which model, which plasticity rule, and their sizes."""

    model: Literal["plastic", "rnn", "lstm"] = "plastic"
    """Network type: `plastic` (w + alpha*Hebb), `rnn` (same network, no plasticity) or `lstm`."""
    rule: str = "hebb"
    """Plasticity rule (plastic model only): `hebb` (decaying Hebb) or `oja`."""
    eta: float = 0.01
    """Initial plasticity rate, in (0, 1]."""
    eta_mode: Literal["scalar", "per-connection"] = "scalar"
    """One eta for the whole network (paper) or one per connection."""
    learn_eta: bool = True
    """Train eta by backprop (True) or keep it fixed at --eta."""
    alpha_mode: Literal["free", "yoked"] = "free"
    """Plasticity coefficient alpha per connection (`free`) or one shared scalar (`yoked`)."""
    clip: float | None = None
    """Clamp Hebb to [-clip, clip] after each update; None for no clipping."""
    extra_neurons: int = 0
    """Hidden neurons added to the recurrent network beyond one per input (plastic, rnn)."""
    hidden: int = 2000
    """LSTM units (lstm model only)."""
    init_std: float = 0.01
    """Standard deviation of the normal initialisation of w and alpha."""
    recompute_every: int = 0
    """If > 0, recompute the forward pass in segments of this many steps during backward
    (segment checkpointing): far less memory for a little more time."""


@dataclass
class TrainConfig:
    """The optimisation, the schedule and the run's bookkeeping."""

    episodes: int = 1000
    """Training episodes in total (an optimiser step uses --batch-size episodes)."""
    batch_size: int = 1
    """Episodes per optimiser step, run in parallel."""
    lr: float = 3e-4
    """Adam learning rate."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value; None for no clipping (the reference code)."""
    seed: int = 0
    """Seed for the weights, the training episodes and the held-out episodes."""
    max_minutes: float | None = None
    """Stop after this much wall time (training and evaluation), with a final evaluation
    and checkpoint; None for no limit."""
    eval_every: int = 100
    """Evaluate on the held-out episodes every this many training episodes."""
    eval_episodes: int = 64
    """Held-out episodes (fixed, never trained on) used for each evaluation."""
    checkpoint_every: int = 500
    """Write the checkpoint every this many training episodes (and at the end)."""
    device: str = "auto"
    """`auto` (CUDA if available), `cpu`, `cuda` or `cuda:N`."""
    out: str = "runs"
    """Directory under which each run gets its own folder (checkpoint, figures, metrics)."""


@dataclass
class PatternsConfig(TrainConfig, ModelConfig):
    """Binary pattern memorisation and completion (the paper's Fig. 1 task)."""

    task: Literal["patterns"] = "patterns"
    """The task (fixed for this config)."""
    preset: str = "reference"
    """Named settings this config started from: `reference` (2018 code), `paper` (paper
    text), `small` (50-bit comparison setting, trains in under a minute)."""
    pattern_size: int = 1000
    """Bits per pattern (each +1 or -1)."""
    num_patterns: int = 5
    """Patterns to memorise per episode."""
    num_cycles: int = 2
    """Times the whole set is shown, in a new random order each time."""
    present_steps: int = 6
    """Steps each pattern is shown for."""
    gap_steps: int = 4
    """Zero-input steps after each presentation."""
    test_steps: int = 6
    """Steps the degraded test pattern is shown for; the loss is read at the last one."""
    erase_fraction: float = 0.5
    """Fraction of the test pattern's bits set to zero (exactly this many)."""
    balanced: bool = True
    """Exactly half of each pattern's bits are +1 (reference code) rather than i.i.d. signs."""
    input_gain: float = 20.0
    """The input is multiplied by this before being added to the pre-activation."""
    bias_neuron: bool = True
    """Add one neuron whose input is always 1 (times --input-gain)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatternsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}: "
                              f"valid fields are {', '.join(sorted(known))}")
        return validate(cls(**data))

    def replace(self, **changes) -> PatternsConfig:
        return validate(dataclasses.replace(self, **changes))


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "patterns": {
        # Defaults of the 2018 reference code (simple.py / full.py): 106 steps.
        "reference": dict(pattern_size=1000, num_patterns=5, num_cycles=2, present_steps=6, gap_steps=4,
                          test_steps=6, lr=3e-4, batch_size=1, episodes=1200, eval_every=50,
                          eval_episodes=32, checkpoint_every=100),
        # The paper's text: 10 steps per presentation, 3 zero steps, 3 cycles.
        "paper": dict(pattern_size=1000, num_patterns=5, num_cycles=3, present_steps=10, gap_steps=3,
                      test_steps=10, lr=1e-3, batch_size=1, episodes=1200, eval_every=50,
                      eval_episodes=32, checkpoint_every=100),
        # The paper's comparison setting (50 bits, 2 patterns, 11 steps), batched.
        "small": dict(pattern_size=50, num_patterns=2, num_cycles=1, present_steps=3, gap_steps=1,
                      test_steps=3, lr=3e-3, batch_size=32, episodes=20000, eval_every=2000,
                      eval_episodes=512, checkpoint_every=10000),
    },
}

CONFIGS = {"patterns": PatternsConfig}


def preset(task: str, name: str, **overrides) -> PatternsConfig:
    """The config of `task` under preset `name`, with `overrides` applied, validated."""
    check_choice("task", task, CONFIGS)
    check_choice(f"{task} preset", name, PRESETS[task])
    return validate(CONFIGS[task](preset=name, **{**PRESETS[task][name], **overrides}))


def validate(cfg: PatternsConfig) -> PatternsConfig:
    """Check every field; raise one `ConfigError` naming the first bad value and the fix."""
    check_choice("model", cfg.model, MODELS)
    check_choice("plasticity rule", cfg.rule, RULES)
    check_choice("alpha mode", cfg.alpha_mode, ALPHA_MODES)
    check_choice("eta mode", cfg.eta_mode, ETA_MODES)
    check_eta(cfg.eta)
    for name in ("episodes", "batch_size", "lr", "eval_every", "eval_episodes", "checkpoint_every",
                 "hidden", "init_std", "pattern_size", "num_patterns", "num_cycles", "present_steps",
                 "test_steps", "input_gain"):
        check_positive(name, getattr(cfg, name))
    for name in ("extra_neurons", "gap_steps", "recompute_every"):
        check_positive(name, getattr(cfg, name), allow_zero=True)
    for name in ("clip", "grad_clip", "max_minutes"):
        if getattr(cfg, name) is not None:
            check_positive(name, getattr(cfg, name))
    if not 0.0 < cfg.erase_fraction < 1.0:
        raise ConfigError(f"erase_fraction must be in (0, 1), got {cfg.erase_fraction}: pass e.g. 0.5")
    if cfg.balanced and cfg.pattern_size % 2:
        raise ConfigError(f"balanced patterns need an even pattern_size, got {cfg.pattern_size}: "
                          "pass an even size or --no-balanced")
    return cfg
