"""The maze task: find the invisible reward, remember where it is, return after each
teleport (Miconi et al. 2018; Backpropamine). The environment is `plasticity.envs.maze`,
the agent `plasticity.agents`, the training loop A2C (`plasticity.train.a2c`).
"""

from __future__ import annotations

import torch

from plasticity.agents import ActorCritic, build_agent
from plasticity.envs.maze import ACTIONS, MazeLayout, MazeSpec, draw_layout
from plasticity.tasks.base import Task, register_task

EVAL_CHUNK = 128
"""Held-out episodes played at once."""


@register_task("maze")
class MazeTask(Task):
    """The maze of `cfg` (a `MazeConfig`): its layouts and the agent that plays it."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.spec = MazeSpec(cfg.maze_size, cfg.view, cfg.episode_steps, cfg.goal_reward, cfg.wall_penalty)

    def build_model(self, cfg) -> ActorCritic:
        """The actor-critic agent named by `cfg.model`, sized for this maze's observations."""
        return build_agent(cfg, self.spec.obs_size, len(ACTIONS))

    def sample(self, batch: int, generator: torch.Generator) -> MazeLayout:
        """The random draws of `batch` fresh episodes (goal cells, teleport destinations)."""
        return draw_layout(self.spec, batch, generator)

    def heldout_layouts(self, episodes: int, seed: int) -> list[MazeLayout]:
        """Fixed held-out episodes drawn from `seed`, in batches of at most `EVAL_CHUNK`."""
        g = torch.Generator().manual_seed(seed)
        return [self.sample(min(EVAL_CHUNK, episodes - i), g) for i in range(0, episodes, EVAL_CHUNK)]
