"""Config and presets of the maze task (reinforcement learning with A2C)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from plasticity.config.base import TaskConfig, register_config
from plasticity.config.limits import NonNegative, Positive, Range
from plasticity.rules import RULES


@dataclass
class MazeConfig(TaskConfig):
    """Maze exploration by reinforcement learning (A2C): find the invisible reward, remember
    where it is and return after each teleport (the 2018 paper's maze; Backpropamine)."""

    trainer: ClassVar[str] = "a2c"

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
    """Plasticity rule of the `plastic` model: `oja` (the 2018 maze) or `hebb`. The
    neuromodulated models (`neuromod`, `retroactive`) always use their own rule, so for them
    the rule is set to the model's name."""
    clip: Positive[float | None] = 1.0
    """Clamp Hebb to [-clip, clip] after each update (1.0 as in Backpropamine: the neuromodulated
    rules have nothing else that bounds Hebb); None for no clipping."""
    extra_neurons: Annotated[int, Range(0, 0)] = 0
    """Not used by the maze agent (it has --hidden recurrent neurons): must stay 0."""
    hidden: Positive[int] = 100
    """Recurrent neurons of the agent (every model; the same number for the non-plastic baseline)."""
    impl: Literal["autograd"] = "autograd"
    """The agent is stepped one time step at a time (it acts between steps), so its
    network runs step-by-step autograd."""
    segment_steps: Annotated[int, Range(0, 0)] = 0
    """Not used by the maze agent (stepped one step at a time): must stay 0."""
    modulation: Literal["network", "neuron"] = "network"
    """Neuromodulated models: one M(t) for the whole network, or one per postsynaptic neuron."""
    maze_size: Positive[int] = 9
    """Side of the square maze, border walls included (odd); pillars on even rows and columns."""
    view: Positive[int] = 3
    """Side of the square neighbourhood the agent sees (odd)."""
    episode_steps: Positive[int] = 200
    """Steps per episode (fixed length)."""
    goal_reward: Positive[float] = 10.0
    """Reward for reaching the hidden goal; the agent is then teleported to a random cell."""
    wall_penalty: NonNegative[float] = 0.1
    """Cost of moving into a wall."""
    gamma: Annotated[float, Range(0, 1)] = 0.9
    """Discount of the returns R_t = r_t + gamma * R_{t+1}."""
    value_weight: NonNegative[float] = 0.1
    """Weight of the value (critic) loss."""
    entropy_weight: NonNegative[float] = 0.03
    """Weight of the entropy bonus (keeps the policy exploring)."""

    def __post_init__(self):
        # A neuromodulated model runs its own rule (see `rule`).
        if self.model in RULES and RULES[self.model].modulated:
            self.rule = self.model

    def neurons(self) -> int:
        return self.hidden + self.view ** 2 + 8

    def steps(self) -> int:
        return self.episode_steps

    def fixed_bytes(self) -> int:
        # The grid (`np.indices`: two int64 per cell), and the evaluation's GIF: one RGB
        # frame per step at 16 pixels per cell, all held until it is written.
        return 17 * self.maze_size ** 2 + self.episode_steps * 3 * (16 * self.maze_size) ** 2

    def heldout_bytes(self) -> int:
        # A held-out layout keeps its teleport destinations (int64 per step) for the whole evaluation.
        return 64 + 8 * self.episode_steps

    def check(self) -> None:
        from plasticity.envs.maze import MazeSpec

        MazeSpec(self.maze_size, self.view, self.episode_steps, self.goal_reward, self.wall_penalty)


register_config(MazeConfig, {
    # Backpropamine's maze settings (13x13 there, 9x9 here): 200 steps, 100 neurons, batch 30,
    # Adam 1e-4, gradient-norm clip 4, entropy 0.03, value loss 0.1, gamma 0.9, Hebb clip 1.
    "reference": dict(episode_steps=200, hidden=100, batch_size=30, lr=1e-4, grad_clip=4.0, entropy_weight=0.03,
                      value_weight=0.1, gamma=0.9, eta=0.1, init_std=0.1, episodes=600_000, eval_every=6000,
                      eval_episodes=120, save_every=6000),
    # Small enough for a few minutes on 2 CPU cores.
    "small": dict(episode_steps=100, hidden=64, batch_size=32, lr=1e-3, grad_clip=4.0, entropy_weight=0.03,
                  value_weight=0.1, gamma=0.9, eta=0.1, init_std=0.1, episodes=20_000, eval_every=2000,
                  eval_episodes=128, save_every=2000),
})
