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
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

from plasticity.errors import ConfigError, check_choice, check_eta, check_positive
from plasticity.nn import ALPHA_MODES, ETA_MODES, IMPLS
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
    impl: Literal["fused", "plain"] = "fused"
    """How the plastic recurrent network runs: `fused` (one pass over Hebb per step; the
    backward pass rebuilds Hebb by inverting the rule, so memory does not grow with the
    episode length) or `plain` (step-by-step autograd, the reference). Neuromodulated
    rules always run plain."""
    recompute_every: int = 0
    """If > 0: with --impl plain, recompute the forward pass in segments of this many steps
    during backward (segment checkpointing: far less memory for a little more time); with
    --impl fused, store an exact Hebb state every this many steps."""


@dataclass
class TrainConfig:
    """The optimisation, the schedule and the run's bookkeeping."""

    episodes: int = 1000
    """Training episodes in total (an optimiser step uses --batch-size episodes)."""
    batch_size: int = 1
    """Episodes per optimiser step, run in parallel."""
    lr: float = 3e-4
    """Adam learning rate (every trained parameter but eta's; see --eta-lr)."""
    eta_lr: float | None = None
    """Adam learning rate of eta's own parameter `eta_logit` (eta = sigmoid(eta_logit)),
    so a step moves eta by about eta_lr x eta x (1 - eta): a rate relative to eta's size.
    None: --lr x `plasticity.train.optim.ETA_LR_RATIO` (chosen by measurement, README)."""
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
    checkpoint_minutes: float | None = 10.0
    """Also write it when this much wall time has passed since the last one, so that a
    run killed without warning (SIGKILL) loses at most this much; None: episodes only."""
    device: str = "auto"
    """`auto` (CUDA if available), `cpu`, `cuda` or `cuda:N`."""
    out: str = "runs"
    """Directory under which each run gets its own folder (checkpoint, figures, metrics)."""


@dataclass
class TaskConfig(TrainConfig, ModelConfig):
    """Base of every task's flat config: model + training fields + the task's own.

    Subclasses set `task` and `preset` defaults, add their fields, list the models they
    accept in `models` and the trainer that runs them in `trainer`, and may add checks
    in `check()`. Register them with `register_config`."""

    task: str = ""
    """The task (fixed for each config class)."""
    preset: str = ""
    """Named settings this config started from."""

    models: ClassVar[tuple[str, ...]] = MODELS
    """Values `model` may take for this task."""
    trainer: ClassVar[str] = "episodic"
    """Training loop that runs this task (`episodic` = supervised episodes)."""
    positive: ClassVar[tuple[str, ...]] = ()
    """Task fields that must be > 0."""
    non_negative: ClassVar[tuple[str, ...]] = ()
    """Task fields that must be >= 0."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
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

    def neurons(self) -> int:
        """Side N of the largest N x N matrix the model holds (plastic weights, Hebb per
        episode), used to refuse sizes that cannot fit before anything is allocated."""
        return self.extra_neurons + (2 * self.hidden if self.model == "lstm" else 0)


@dataclass
class PatternsConfig(TaskConfig):
    """Binary pattern memorisation and completion (the paper's Fig. 1 task)."""

    positive: ClassVar[tuple[str, ...]] = ("pattern_size", "num_patterns", "num_cycles", "present_steps",
                                           "test_steps", "input_gain")
    non_negative: ClassVar[tuple[str, ...]] = ("gap_steps",)

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

    def neurons(self) -> int:
        return super().neurons() + self.pattern_size + int(self.bias_neuron)

    def check(self) -> None:
        if not 0.0 < self.erase_fraction < 1.0:
            raise ConfigError(f"erase_fraction must be in (0, 1), got {self.erase_fraction}: pass e.g. 0.5")
        if self.balanced and self.pattern_size % 2:
            raise ConfigError(f"balanced patterns need an even pattern_size, got {self.pattern_size}: "
                              "pass an even size or --no-balanced")


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "patterns": {
        # Defaults of the 2018 reference code (simple.py / full.py): 106 steps. 512 held-out
        # episodes (512,000 bits) resolve an all-bit error of 0.0005 (256 wrong bits, with a
        # 95% interval logged beside it); every 200 episodes keeps evaluation below training time.
        "reference": dict(pattern_size=1000, num_patterns=5, num_cycles=2, present_steps=6, gap_steps=4,
                          test_steps=6, lr=3e-4, batch_size=1, episodes=1200, eval_every=200,
                          eval_episodes=512, checkpoint_every=200),
        # The paper's text: 10 steps per presentation, 3 zero steps, 3 cycles.
        "paper": dict(pattern_size=1000, num_patterns=5, num_cycles=3, present_steps=10, gap_steps=3,
                      test_steps=10, lr=1e-3, batch_size=1, episodes=1200, eval_every=200,
                      eval_episodes=512, checkpoint_every=200),
        # The paper's comparison setting (50 bits, 2 patterns, 11 steps), batched.
        "small": dict(pattern_size=50, num_patterns=2, num_cycles=1, present_steps=3, gap_steps=1,
                      test_steps=3, lr=3e-3, batch_size=32, episodes=20000, eval_every=2000,
                      eval_episodes=512, checkpoint_every=10000),
    },
}

CONFIGS: dict[str, type[TaskConfig]] = {"patterns": PatternsConfig}


def register_config(cls: type[TaskConfig], presets: dict[str, dict[str, Any]]) -> type[TaskConfig]:
    """Make a task's config and its named presets known to the CLI, the sweeps and checkpoints."""
    name = next(f.default for f in fields(cls) if f.name == "task")
    CONFIGS[name], PRESETS[name] = cls, presets
    return cls


def preset(task: str, name: str, **overrides) -> TaskConfig:
    """The config of `task` under preset `name`, with `overrides` applied, validated."""
    check_choice("task", task, CONFIGS)
    check_choice(f"{task} preset", name, PRESETS[task])
    return validate(CONFIGS[task](preset=name, **{**PRESETS[task][name], **overrides}))


def check_rule(cfg: TaskConfig) -> None:
    """The rule must be registered; a neuromodulated rule only with the model of that name
    (the network must emit the modulatory signal that drives it)."""
    if cfg.rule in RULES and RULES[cfg.rule].modulated and cfg.model != cfg.rule:
        if cfg.rule in type(cfg).models:
            raise ConfigError(f"rule {cfg.rule!r} is neuromodulated: pass --model {cfg.rule} "
                              "(or --rule oja / hebb for the plastic model)")
        raise ConfigError(f"rule {cfg.rule!r} is neuromodulated and needs a network that emits the modulatory "
                          f"signal (the maze task's --model {cfg.rule}): pass --rule hebb or --rule oja")
    choices = [name for name, rule in RULES.items() if not rule.modulated or name == cfg.model]
    check_choice("plasticity rule", cfg.rule, choices)


MAX_LR = 1e6
"""Largest learning rate accepted (Adam's arithmetic overflows float32 far above it)."""
MAX_INT = 2**62
"""Largest integer any field takes (seeds and counts stay clear of 64-bit overflow)."""


def check_numbers(cfg: TaskConfig) -> None:
    """Every float field finite, every integer field within +-MAX_INT."""
    for f in fields(cfg):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            example = f.default if isinstance(f.default, float) else 1.0
            raise ConfigError(f"{flag} must be a finite number, got {value}: pass a number such as {example}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ConfigError(f"{flag} is too large ({value}): pass a value below 2**62")
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {cfg.seed}: pass e.g. --seed 0")
    for name in ("lr", "eta_lr"):
        # Adam's step is about lr: above float32's range its own arithmetic overflows.
        value = getattr(cfg, name, None)
        if value is not None and value > MAX_LR:
            raise ConfigError(f"--{name.replace('_', '-')} {value:g} is too large: pass a learning rate of at most "
                              f"{MAX_LR:g}")


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(cfg: TaskConfig) -> None:
    """Refuse sizes whose weights and per-episode Hebb matrices cannot fit in this machine's
    memory (a rough lower bound: float32 weights with Adam's two moments, and a few
    N x N tensors per episode of a batch), before anything is allocated."""
    n = cfg.neurons()
    need = 4 * n * n * (3 * 3 + 4 * cfg.batch_size)
    have = physical_memory()
    if have and need > have:
        raise ConfigError(f"this model needs at least {need / 2**30:.0f} GiB ({n} neurons, batch {cfg.batch_size}) "
                          f"and this machine has {have / 2**30:.0f} GiB: lower the sizes or --batch-size")


def validate(cfg: TaskConfig) -> TaskConfig:
    """Check every field; raise one `ConfigError` naming the first bad value and the fix."""
    check_numbers(cfg)
    check_choice("model", cfg.model, type(cfg).models)
    check_rule(cfg)
    check_choice("alpha mode", cfg.alpha_mode, ALPHA_MODES)
    check_choice("eta mode", cfg.eta_mode, ETA_MODES)
    check_choice("implementation", cfg.impl, IMPLS)
    check_eta(cfg.eta, learned=cfg.learn_eta)
    for name in ("episodes", "batch_size", "lr", "eval_every", "eval_episodes", "checkpoint_every",
                 "hidden", "init_std", *type(cfg).positive):
        check_positive(name, getattr(cfg, name))
    for name in ("extra_neurons", "recompute_every", *type(cfg).non_negative):
        check_positive(name, getattr(cfg, name), allow_zero=True)
    for name in ("clip", "grad_clip", "max_minutes", "checkpoint_minutes", "eta_lr"):
        if getattr(cfg, name) is not None:
            check_positive(name, getattr(cfg, name))
    cfg.check()
    check_memory(cfg)
    return cfg


@dataclass
class ImagesConfig(TaskConfig):
    """Natural-image memorisation and completion on CIFAR-10 (the paper's task 2)."""

    task: Literal["images"] = "images"
    """The task (fixed for this config)."""
    preset: str = "reference"
    """Named settings this config started from: `reference` (2018 code: 32x32, 201 steps),
    `small` (16x16 images, 51 steps: minutes on a CPU)."""
    data_dir: str | None = None
    """Folder with the CIFAR-10 python batches (or their cifar-10-batches-py/ folder);
    default $PLASTICITY_DATA, else ./data. Get them with `plasticity data download cifar10`."""
    image_size: int = 32
    """Side of the grayscale images fed to the network (32, or 16/8 by average pooling)."""
    num_images: int = 3
    """Images to memorise per episode."""
    num_cycles: int = 3
    """Times the whole set is shown, in a new random order each time."""
    present_steps: int = 20
    """Steps each image is clamped onto the network."""
    gap_steps: int = 2
    """Zero-input steps after each presentation."""
    test_steps: int = 3
    """Steps the half-erased test image is shown; the loss is read at the last one."""
    erase_half: Literal["random", "top", "bottom"] = "random"
    """Which half of the test image is zeroed: top or bottom at random (reference), or always one."""
    bias_neuron: bool = True
    """Add one neuron clamped to 1."""
    input_mode: Literal["clamp", "add"] = "clamp"
    """`clamp`: neurons with a non-zero input take that value (reference); `add`: the input is
    added to the pre-activation."""

    positive: ClassVar[tuple[str, ...]] = ("image_size", "num_images", "num_cycles", "present_steps", "test_steps")
    non_negative: ClassVar[tuple[str, ...]] = ("gap_steps",)

    def neurons(self) -> int:
        return super().neurons() + self.image_size ** 2 + int(self.bias_neuron)

    def check(self) -> None:
        if self.image_size not in (8, 16, 32):
            raise ConfigError(f"image_size must be 32, 16 or 8 (CIFAR-10 is 32x32, smaller sizes pool it), "
                              f"got {self.image_size}")


register_config(ImagesConfig, {
    # The 2018 reference code (images.py): 3 images x 3 cycles x (20 + 2) steps + 3 test steps.
    "reference": dict(image_size=32, num_images=3, num_cycles=3, present_steps=20, gap_steps=2, test_steps=3,
                      lr=1e-4, batch_size=1, episodes=3000, eval_every=50, eval_episodes=32, checkpoint_every=100),
    # 16x16 images (257 neurons) and shorter episodes (51 steps): learns in minutes on a CPU.
    "small": dict(image_size=16, num_images=3, num_cycles=2, present_steps=6, gap_steps=2, test_steps=3,
                  lr=1e-3, batch_size=8, episodes=4000, eval_every=200, eval_episodes=64, checkpoint_every=400),
})


@dataclass
class OmniglotConfig(TaskConfig):
    """One-shot classification on Omniglot, N-way 1-shot (the paper's task 3)."""

    task: Literal["omniglot"] = "omniglot"
    """The task (fixed for this config)."""
    preset: str = "reference"
    """Named settings this config started from: `reference` (2018 code: Oja, eta 0.01, lr 3e-5,
    batch 1) or `small` (batch 32, learned eta from 0.5, lr 1e-3: learns in minutes on a CPU)."""
    model: Literal["plastic"] = "plastic"
    """Network type: a conv embedding with a plastic read-out (the only model for this task)."""
    rule: str = "oja"
    """Plasticity rule of the read-out: `oja` (paper) or `hebb` (decaying Hebb)."""
    learn_eta: bool = False
    """Train eta by backprop (the reference keeps it at 0.01)."""
    data_dir: str | None = None
    """Folder with the Omniglot zips or trees; default $PLASTICITY_DATA, else ./data.
    Get them with `plasticity data download omniglot`."""
    sets: str = ""
    """Comma-separated sets to use (images_background, images_evaluation,
    images_background_small1, images_background_small2); empty: every set found."""
    split: Literal["auto", "paper", "random"] = "auto"
    """Character split: `paper` (background set for training/validation, evaluation set for test),
    `random` (seeded split of all characters found), `auto` (paper if both full sets are there)."""
    split_seed: int = 0
    """Seed of the character split (stored with the checkpoint)."""
    val_fraction: float = 0.1
    """Fraction of the characters held out for validation during training."""
    test_fraction: float = 0.2
    """Fraction of the characters held out for testing (`random` split only)."""
    n_way: int = 5
    """Classes per episode."""
    rotations: bool = True
    """Rotate each class by a random multiple of 90 degrees per episode (rotations as new classes)."""
    channels: int = 64
    """Channels of each of the 4 conv layers (the embedding size)."""
    label_gain: float = 1000.0
    """The one-hot label is multiplied by this and added to the output layer on presentation steps."""

    models: ClassVar[tuple[str, ...]] = ("plastic",)
    positive: ClassVar[tuple[str, ...]] = ("n_way", "channels", "label_gain")

    def neurons(self) -> int:
        # The conv layers' 3x3 x channels x channels kernels dominate.
        return 3 * self.channels + self.n_way

    def check(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave characters for training (< 1)")
        if self.n_way < 2:
            raise ConfigError(f"n_way must be at least 2, got {self.n_way}")


register_config(OmniglotConfig, {
    # The 2018 reference (omniglot.py): Oja, eta 0.01, lr 3e-5, batch 1, 5M episodes.
    "reference": dict(rule="oja", eta=0.01, lr=3e-5, batch_size=1, episodes=5_000_000, eval_every=10_000,
                      eval_episodes=1000, checkpoint_every=10_000),
    # Batched, with a larger learned eta (0.5: one presentation writes most of the embedding into
    # Hebb) and learning rate: far above chance in minutes on a CPU.
    "small": dict(rule="oja", eta=0.5, learn_eta=True, lr=1e-3, batch_size=32, episodes=300_000, eval_every=6400,
                 eval_episodes=1024, checkpoint_every=6400),
})


@dataclass
class MazeConfig(TaskConfig):
    """Maze exploration by reinforcement learning (A2C): find the invisible reward, remember
    where it is and return after each teleport (the 2018 paper's maze; Backpropamine)."""

    models: ClassVar[tuple[str, ...]] = ("plastic", "rnn", "neuromod", "retroactive")
    trainer: ClassVar[str] = "a2c"
    positive: ClassVar[tuple[str, ...]] = ("maze_size", "view", "episode_steps", "goal_reward")
    non_negative: ClassVar[tuple[str, ...]] = ("wall_penalty", "value_weight", "entropy_weight")

    task: Literal["maze"] = "maze"
    """The task (fixed for this config)."""
    preset: str = "reference"
    """Named settings this config started from: `reference` (Backpropamine's settings on the
    9x9 maze: 200 steps, 100 neurons, batch 30) or `small` (a few minutes on 2 CPU cores)."""
    model: Literal["plastic", "rnn", "neuromod", "retroactive"] = "plastic"
    """Agent's recurrent network: `plastic` (w + alpha*Hebb, rule --rule), `rnn` (the same network
    without plasticity), `neuromod` or `retroactive` (Backpropamine: the network emits M(t) that
    drives its own plasticity; the rule is the model's name)."""
    rule: str = "oja"
    """Plasticity rule of the `plastic` model: `oja` (the 2018 maze) or `hebb`. Set to the model's
    own rule for `neuromod` and `retroactive`."""
    clip: float | None = 1.0
    """Clamp Hebb to [-clip, clip] after each update (1.0 as in Backpropamine: the neuromodulated
    rules have nothing else that bounds Hebb); None for no clipping."""
    hidden: int = 100
    """Recurrent neurons of the agent (every model; the same number for the non-plastic baseline)."""
    impl: Literal["plain"] = "plain"
    """The agent is stepped one time step at a time (it acts between steps), so its
    network runs step-by-step autograd (`plain`)."""
    modulation: Literal["network", "neuron"] = "network"
    """Neuromodulated models: one M(t) for the whole network, or one per postsynaptic neuron."""
    maze_size: int = 9
    """Side of the square maze, border walls included (odd); pillars on even rows and columns."""
    view: int = 3
    """Side of the square neighbourhood the agent sees (odd)."""
    episode_steps: int = 200
    """Steps per episode (fixed length)."""
    goal_reward: float = 10.0
    """Reward for reaching the hidden goal; the agent is then teleported to a random cell."""
    wall_penalty: float = 0.1
    """Cost of moving into a wall."""
    gamma: float = 0.9
    """Discount of the returns R_t = r_t + gamma * R_{t+1}."""
    value_weight: float = 0.1
    """Weight of the value (critic) loss."""
    entropy_weight: float = 0.03
    """Weight of the entropy bonus (keeps the policy exploring)."""

    def __post_init__(self):
        if self.model in ("neuromod", "retroactive"):
            self.rule = self.model

    def neurons(self) -> int:
        return self.hidden + self.view ** 2 + 8

    def check(self) -> None:
        from plasticity.envs.maze import MazeSpec

        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}: pass e.g. --gamma 0.9")
        if self.extra_neurons or self.recompute_every:
            raise ConfigError("the maze agent is stepped one step at a time with --hidden neurons: "
                              "leave --extra-neurons and --recompute-every at 0")
        MazeSpec(self.maze_size, self.view, self.episode_steps, self.goal_reward, self.wall_penalty)


register_config(MazeConfig, {
    # Backpropamine's maze settings (13x13 there, 9x9 here): 200 steps, 100 neurons, batch 30,
    # Adam 1e-4, gradient-norm clip 4, entropy 0.03, value loss 0.1, gamma 0.9, Hebb clip 1.
    "reference": dict(episode_steps=200, hidden=100, batch_size=30, lr=1e-4, grad_clip=4.0, entropy_weight=0.03,
                      value_weight=0.1, gamma=0.9, eta=0.1, init_std=0.1, episodes=600_000, eval_every=6000,
                      eval_episodes=120, checkpoint_every=6000),
    # Small enough for a few minutes on 2 CPU cores.
    "small": dict(episode_steps=100, hidden=64, batch_size=32, lr=1e-3, grad_clip=4.0, entropy_weight=0.03,
                  value_weight=0.1, gamma=0.9, eta=0.1, init_std=0.1, episodes=20_000, eval_every=2000,
                  eval_episodes=128, checkpoint_every=2000),
})
