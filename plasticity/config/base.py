"""The parts every task's config shares: the network (`ModelConfig`), the optimisation
and schedule (`TrainConfig`), their union `TaskConfig`, validation and the registry.

A task's config is one flat dataclass (flat so that CLI flags, sweep parameters, MLflow
params and checkpoint keys are the same names), defined in its own module beside this
one with its presets, and registered with `register_config`:

    @dataclass
    class PatternsConfig(TaskConfig):
        task: Literal["patterns"] = "patterns"
        pattern_size: Positive[int] = 1000
        ...
    register_config(PatternsConfig, {"reference": dict(...), "small": dict(...)})

Limits are part of each field's type (`Positive[int]`, `Literal[...]`, `Range`, see
`limits.py`); `validate` checks them all, then the rule, eta, the task's own `check()`
and the memory and time a run and its evaluations need (`resources.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import Annotated, Any, ClassVar, Literal

from plasticity.config.limits import NonNegative, Positive, Range, check_fields, field_choices
from plasticity.config.renames import upgrade_dict
from plasticity.config.resources import check_evaluation, check_memory
from plasticity.errors import ConfigError, check_choice, check_eta
from plasticity.rules import RULES, rule_names

MAX_LR = 1e6
"""Largest learning rate accepted (Adam's arithmetic overflows float32 far above it)."""

@dataclass
class ModelConfig:
    """The network: which model, which plasticity rule, and their sizes."""

    model: Literal["plastic", "rnn", "lstm"] = "plastic"
    """Network type: `plastic` (w + alpha*Hebb), `rnn` (same network, no plasticity) or `lstm`."""
    rule: str = "hebb"
    """Plasticity rule of the plastic network, one of the registry's (`plasticity.rules`):
    those without a modulatory signal (built in: `hebb`, decaying Hebb, and `oja`) with any
    plastic model; a neuromodulated one (`neuromod`, `retroactive`) only with the model of
    its name, which emits the signal (the maze's)."""
    eta: float = 0.01
    """Initial plasticity rate, in (0, 1]."""
    eta_mode: Literal["scalar", "per-connection"] = "scalar"
    """One eta for the whole network (paper) or one per connection."""
    learn_eta: bool = True
    """Train eta by backprop (True) or keep it fixed at --eta."""
    alpha_mode: Literal["free", "shared"] = "free"
    """Plasticity coefficient alpha per connection (`free`) or one scalar shared by every
    connection (`shared`; the paper calls it "yoked")."""
    clip: Positive[float | None] = None
    """Clamp Hebb to [-clip, clip] after each update; None for no clipping."""
    extra_neurons: NonNegative[int] = 0
    """Hidden neurons added to the recurrent network beyond one per input (plastic, rnn)."""
    hidden: Positive[int] = 2000
    """LSTM units (lstm model only)."""
    init_std: Positive[float] = 0.01
    """Standard deviation of the normal initialisation of w and alpha."""
    impl: Literal["fused", "autograd"] = "fused"
    """How the plastic recurrent network runs: `fused` (one pass over Hebb per step; the
    backward pass rebuilds Hebb by inverting the rule, or recomputes it from kept states
    for a two-trace rule such as `retroactive`, so memory does not grow with the episode
    length) or `autograd` (step-by-step autograd, the reference). `fused` runs every rule
    that has an elementwise form, the neuromodulated ones included; a rule without one
    runs on autograd (with a one-line notice)."""
    segment_steps: NonNegative[int] = 0
    """If > 0, the backward pass works through the episode in segments of this many steps,
    each from a state kept in the forward pass: with --impl autograd it recomputes each
    segment's forward (far less memory for a little more time); with --impl fused it keeps
    an exact Hebb every this many steps (less rounding in the rebuilt Hebb). 0: one segment."""

    @property
    def plastic(self) -> bool:
        """Whether the network has plastic connections (w + alpha * Hebb under `rule`): the
        `plastic` model and the neuromodulated ones, named after their rule; not the
        baselines `rnn` and `lstm`. The one answer for everything that depends on it (run
        names, logged params and tags, memory estimates, the plastic metrics)."""
        return self.model == "plastic" or self.model in RULES


@dataclass
class TrainConfig:
    """The optimisation, the schedule and the run's bookkeeping."""

    episodes: Positive[int] = 1000
    """Training episodes in total (an optimiser step uses --batch-size episodes)."""
    batch_size: Positive[int] = 1
    """Episodes per optimiser step, run in parallel."""
    lr: Positive[float] = 3e-4
    """Adam learning rate (every trained parameter but eta's; see --eta-lr); at most 1e6."""
    eta_lr: Positive[float | None] = None
    """Adam learning rate of eta's own parameter `eta_logit` (eta = sigmoid(eta_logit)),
    so a step moves eta by about eta_lr x eta x (1 - eta): a rate relative to eta's size.
    None: --lr x `plasticity.train.optim.ETA_LR_RATIO` (chosen by measurement, README)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """How the learning rates (--lr and --eta-lr alike) change over --episodes: constant, or
    cosine decay from them to --lr-final x them at the last episode (PyTorch's
    CosineAnnealingLR, stepped per episode and computed from the episode, so resuming
    continues it exactly)."""
    lr_final: Annotated[float, Range(0, 1)] = 0.0
    """With --lr-schedule cosine: the final learning rates as a fraction of the initial ones."""
    grad_clip: Positive[float | None] = None
    """Clip the gradient norm to this value; None for no clipping (the reference code)."""
    seed: NonNegative[int] = 0
    """Seed for the weights, the training episodes and the held-out episodes."""
    max_minutes: Positive[float | None] = None
    """Stop after this much wall time (training and evaluation), with a final evaluation
    and checkpoint; None for no limit."""
    eval_every: Positive[int] = 100
    """Evaluate on the held-out episodes every this many training episodes."""
    eval_episodes: Positive[int] = 64
    """Held-out episodes (fixed, never trained on) used for each evaluation."""
    save_every: Positive[int] = 500
    """Save the checkpoint every this many training episodes (and at the end)."""
    save_minutes: Positive[float | None] = 10.0
    """Also save it when this much wall time has passed since the last save, so that a
    run killed without warning (SIGKILL) loses at most this much; None: episodes only."""
    device: str = "auto"
    """`auto` (CUDA if available), `cpu`, `cuda` or `cuda:N`."""
    out: str = "runs"
    """Directory under which each run gets its own folder (checkpoint, figures, metrics)."""


@dataclass
class TaskConfig(TrainConfig, ModelConfig):
    """Base of every task's flat config: model + training fields + the task's own.

    Subclasses set `task` and `preset` defaults, narrow `model` to the models they accept
    (a `Literal`), name the trainer that runs them in `trainer`, and may add checks in
    `check()`. Register them with `register_config`."""

    task: str = ""
    """The task (fixed for each config class)."""
    preset: str = ""
    """Named settings this config started from."""

    trainer: ClassVar[str] = "episodic"
    """Training loop that runs this task (`episodic` = supervised episodes)."""

    @classmethod
    def models(cls) -> tuple[str, ...]:
        """Values `model` may take for this task (its `Literal`)."""
        return field_choices(cls, "model")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The config of a dict written by `to_dict` (a checkpoint's, a sweep trial's);
        fields and values renamed since are converted (see `plasticity.config.renames`)."""
        data = upgrade_dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}: "
                              f"valid fields are {', '.join(sorted(known))}")
        return validate(cls(**data))

    def replace(self, **changes):
        return validate(dataclasses.replace(self, **changes))

    def check(self) -> None:
        """Task-specific checks; raise `ConfigError` naming the field and the fix."""

    # What one episode holds and costs, read by `plasticity.config.resources` to refuse
    # sizes that cannot fit or cannot end before anything is allocated.
    def neurons(self) -> int:
        """Side N of the largest N x N matrix the model holds (plastic weights, Hebb per episode)."""
        return self.extra_neurons + (2 * self.hidden if self.model == "lstm" else 0)

    def steps(self) -> int:
        """Time steps T of one episode (its inputs and activations are `[B, T, ...]`)."""
        return 1

    def step_floats(self) -> int:
        """Values one episode holds per step: its input and the activations kept for the
        backward pass (about 3 x N for a recurrent network fed N inputs)."""
        return 3 * self.neurons()

    def step_work(self) -> int:
        """Multiply-adds of one step of one episode (N x N for the recurrent matrix)."""
        return self.neurons() ** 2

    def heldout_bytes(self) -> int:
        """Bytes an evaluation keeps per episode until it ends (per-episode metrics)."""
        return 64

    def fixed_bytes(self) -> int:
        """Bytes held once whatever the batch (a maze's grid and its figures)."""
        return 0


CONFIGS: dict[str, type[TaskConfig]] = {}
"""Task name -> its config class."""
PRESETS: dict[str, dict[str, dict[str, Any]]] = {}
"""Task name -> preset name -> the fields it sets (the first preset is the default)."""


def register_config(cls: type[TaskConfig], presets: dict[str, dict[str, Any]]) -> type[TaskConfig]:
    """Make a task's config and its named presets known to the CLI, the sweeps and checkpoints."""
    name = next(f.default for f in fields(cls) if f.name == "task")
    CONFIGS[name], PRESETS[name] = cls, presets
    return cls


SEARCH_SPACES: dict[str, dict[str, dict[str, Any]]] = {}
"""Task name -> the search space a sweep uses for it (plugins' tasks; the paper's four are
in `tune.spaces.SPACES`). The format of `tune/spaces.py`: `{field: {"type": "float", "low":
..., "high": ..., "log": True}, ...}`, checked by the sweep before any trial starts."""


def register_space(task: str, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The search space `plasticity sweep --task TASK` uses when no --space is given."""
    SEARCH_SPACES[task] = space
    return space


def preset(task: str, name: str, **overrides) -> TaskConfig:
    """The config of `task` under preset `name`, with `overrides` applied, validated."""
    check_choice("task", task, CONFIGS)
    check_choice(f"{task} preset", name, PRESETS[task])
    overrides = upgrade_dict(overrides)
    return validate(CONFIGS[task](preset=name, **{**PRESETS[task][name], **overrides}))


def check_rule(cfg: TaskConfig) -> None:
    """The rule must be registered; a neuromodulated rule only with the model of that name
    (the network must emit the modulatory signal that drives it)."""
    if cfg.rule in RULES and RULES[cfg.rule].modulated and cfg.model != cfg.rule:
        plain = " or ".join(f"--rule {name}" for name in rule_names(modulated=False))
        if cfg.rule in type(cfg).models():
            raise ConfigError(f"rule {cfg.rule!r} is neuromodulated: pass --model {cfg.rule} "
                              f"(or {plain} for the plastic model)")
        raise ConfigError(f"rule {cfg.rule!r} is neuromodulated and needs a network that emits the modulatory "
                          f"signal (the maze task's --model {cfg.rule}): pass {plain}")
    choices = [name for name, rule in RULES.items() if not rule.modulated or name == cfg.model]
    check_choice("plasticity rule", cfg.rule, choices)


def check_learning_rates(cfg: TaskConfig) -> None:
    """At most MAX_LR: Adam's step is about lr, and above float32's range its own arithmetic
    overflows (a traceback from inside the optimiser otherwise)."""
    for name in ("lr", "eta_lr"):
        value = getattr(cfg, name)
        if value is not None and math.isfinite(value) and value > MAX_LR:
            raise ConfigError(f"--{name.replace('_', '-')} {value:g} is too large: pass a learning rate of at most "
                              f"{MAX_LR:g}")


def check_out(cfg: TaskConfig) -> None:
    """`out` names a folder: an empty name would put runs in the working directory by
    accident (`--out ''` from an unset shell variable)."""
    if not cfg.out.strip():
        raise ConfigError("--out is empty: pass the folder under which runs go, e.g. --out runs")


def validate(cfg: TaskConfig) -> TaskConfig:
    """Check every field; raise one `ConfigError` naming the first bad value and the fix."""
    check_fields(cfg)
    check_learning_rates(cfg)
    check_out(cfg)
    check_rule(cfg)
    check_eta(cfg.eta, learned=cfg.learn_eta)
    cfg.check()
    check_memory(cfg)
    check_evaluation(cfg, cfg.eval_episodes)
    return cfg
