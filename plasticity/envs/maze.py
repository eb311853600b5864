"""The maze-exploration task (Miconi et al. 2018, Backpropamine 2019): a batched torch
environment for training and a gymnasium environment beside it.

The maze is a square grid (9x9 by default): walls on the border and on every cell whose
row and column are both even (a regular lattice of pillars), except the centre, where
the agent starts. The agent sees the walls of its `view x view` neighbourhood (3x3),
plus a bias input, the time `t / T`, the reward of its previous step and its previous
action (one-hot); 4 actions move it up, down, left or right. A reward location is drawn
at random in every episode and is invisible: stepping onto it gives `goal_reward` (+10)
and teleports the agent to a random free cell; moving into a wall leaves it in place and
costs `wall_penalty`. Episodes last exactly `steps` steps. To collect much reward the
agent must find the goal, remember where it was, and go back after each teleport.

An episode's random draws (the goal cell and the destination of each teleport) are made
at reset (`draw_layout`), so they do not depend on the agent's actions: a batch of B
episodes is `MazeLayout(goal [B], teleports [B, T])`. `BatchedMaze` steps B episodes at
once as tensors; `MazeEnv` (gymnasium.Env, plain Python, one episode) is its reference:
given the same layout and actions both produce the same observations and rewards.

    env = BatchedMaze(MazeSpec(), batch=32)
    obs = env.reset(draw_layout(env.spec, 32, generator))   # [B, obs_size]
    obs, reward, done = env.step(actions)                   # actions [B] in 0..3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import gymnasium
import numpy as np
import torch
from torch import Tensor

from plasticity.errors import ConfigError, PlasticityError, ShapeError, check_positive

ACTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))
"""(row, column) moves of the actions 0..3: up, down, left, right."""
ACTION_NAMES = ("up", "down", "left", "right")
EXTRA_INPUTS = 3
"""Bias, time `t / T` and the previous reward, after the view."""


@dataclass(frozen=True)
class MazeSpec:
    """The maze's size and rules (see the module docstring)."""

    size: int = 9
    """Side of the square grid, walls included (odd, >= 5)."""
    view: int = 3
    """Side of the square neighbourhood the agent sees (odd)."""
    steps: int = 200
    """Steps per episode."""
    goal_reward: float = 10.0
    """Reward for reaching the goal (the agent is then teleported)."""
    wall_penalty: float = 0.1
    """Cost of moving into a wall (the agent stays in place)."""

    def __post_init__(self):
        if self.size < 5 or self.size % 2 == 0:
            raise ConfigError(f"maze size must be odd and >= 5, got {self.size}: pass e.g. --maze-size 9")
        if self.view < 1 or self.view % 2 == 0 or self.view > self.size:
            raise ConfigError(f"view must be odd and at most the maze size, got {self.view}: pass e.g. --view 3")
        check_positive("steps", self.steps)
        check_positive("goal_reward", self.goal_reward)
        check_positive("wall_penalty", self.wall_penalty, allow_zero=True)

    @property
    def obs_size(self) -> int:
        """Width of an observation: view, bias, time, previous reward, previous action."""
        return self.view * self.view + EXTRA_INPUTS + len(ACTIONS)

    @property
    def start(self) -> tuple[int, int]:
        return (self.size // 2, self.size // 2)

    def walls(self) -> np.ndarray:
        """`[size, size]` bool: the border, the pillars at even (row, column), not the centre."""
        rows, cols = np.indices((self.size, self.size))
        walls = (rows == 0) | (cols == 0) | (rows == self.size - 1) | (cols == self.size - 1)
        walls |= (rows % 2 == 0) & (cols % 2 == 0)
        walls[self.start] = False
        return walls

    def free_cells(self) -> np.ndarray:
        """`[F, 2]` (row, column) of the free cells, in row-major order."""
        return np.argwhere(~self.walls())


class MazeLayout(NamedTuple):
    """The random part of B episodes, as indices into `spec.free_cells()`."""

    goal: Tensor
    """`[B]` the goal's free cell (never the start)."""
    teleports: Tensor
    """`[B, T]` where the k-th teleport lands: index into the free cells other than the goal."""


def draw_layout(spec: MazeSpec, batch: int, generator: torch.Generator | None = None) -> MazeLayout:
    """Draw B episodes' goals and teleport destinations (uniform over the allowed cells)."""
    free = spec.free_cells()
    n_free = len(free)
    start = int(np.flatnonzero((free == spec.start).all(1))[0])
    goal = torch.randint(n_free - 1, (batch,), generator=generator)
    goal = goal + (goal >= start).long()  # skip the start cell
    teleports = torch.randint(n_free - 1, (batch, spec.steps), generator=generator)
    return MazeLayout(goal, teleports)


class BatchedMaze:
    """B maze episodes stepped together as tensors on `device` (see the module docstring).

    State: positions `[B, 2]`, goal positions `[B, 2]`, goals found so far `[B]`, the
    step count, the previous reward `[B]` and action `[B]`."""

    def __init__(self, spec: MazeSpec, batch: int, device: str | torch.device = "cpu"):
        check_positive("batch", batch)
        self.spec, self.batch, self.device = spec, batch, torch.device(device)
        r = spec.view // 2
        # Pad with walls so that the view never leaves the grid.
        walls = np.pad(spec.walls(), r, constant_values=True)
        self.walls = torch.as_tensor(walls, device=self.device)
        self.free = torch.as_tensor(spec.free_cells(), device=self.device)
        self.moves = torch.tensor(ACTIONS, device=self.device)
        offsets = torch.arange(-r, r + 1, device=self.device)
        self.view_rows = offsets.repeat_interleave(spec.view) + r  # row-major over the view
        self.view_cols = offsets.repeat(spec.view) + r
        self.t = 0

    def reset(self, layout: MazeLayout) -> Tensor:
        """Start B episodes with `layout`; returns the first observation `[B, obs_size]`."""
        if tuple(layout.goal.shape) != (self.batch,) or tuple(layout.teleports.shape) != (self.batch,
                                                                                            self.spec.steps):
            raise ShapeError(f"layout must be goal [{self.batch}], teleports [{self.batch}, {self.spec.steps}]; "
                             f"got {tuple(layout.goal.shape)}, {tuple(layout.teleports.shape)}: use draw_layout")
        self.goal_index = layout.goal.to(self.device)
        self.teleports = layout.teleports.to(self.device)
        self.goal = self.free[self.goal_index]
        self.pos = torch.tensor(self.spec.start, device=self.device).expand(self.batch, 2).clone()
        self.found = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.prev_reward = torch.zeros(self.batch, device=self.device)
        self.prev_action = torch.full((self.batch,), -1, dtype=torch.long, device=self.device)
        self.t = 0
        return self.observe()

    def observe(self) -> Tensor:
        """`[B, obs_size]`: view (1 = wall), bias 1, t / T, previous reward, previous action one-hot."""
        rows = self.pos[:, :1] + self.view_rows
        cols = self.pos[:, 1:] + self.view_cols
        view = self.walls[rows, cols].float()
        extra = torch.stack([torch.ones_like(self.prev_reward), torch.full_like(self.prev_reward,
                             self.t / self.spec.steps), self.prev_reward], 1)
        action = torch.zeros(self.batch, len(ACTIONS), device=self.device)
        taken = self.prev_action >= 0
        action[taken, self.prev_action[taken]] = 1.0
        return torch.cat([view, extra, action], 1)

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Move every episode by `action` `[B]` (0..3): (observation, reward `[B]`, done)."""
        if self.t >= self.spec.steps:
            raise PlasticityError(f"the episodes are over after {self.spec.steps} steps: call reset()")
        r = self.spec.view // 2
        target = self.pos + self.moves[action]
        blocked = self.walls[target[:, 0] + r, target[:, 1] + r]
        self.pos = torch.where(blocked.unsqueeze(1), self.pos, target)
        # Where the move ended, before any teleport (for drawing trajectories).
        self.arrived = self.pos
        found = (self.pos == self.goal).all(1)
        reward = found.float() * self.spec.goal_reward - blocked.float() * self.spec.wall_penalty
        # Teleport: the k-th destination of the episode, among the free cells other than the goal.
        k = self.teleports.gather(1, self.found.unsqueeze(1)).squeeze(1)
        dest = self.free[k + (k >= self.goal_index).long()]
        self.pos = torch.where(found.unsqueeze(1), dest, self.pos)
        self.found = self.found + found.long()
        self.prev_reward, self.prev_action = reward, action.to(self.device)
        self.t += 1
        return self.observe(), reward, self.t >= self.spec.steps


class MazeEnv(gymnasium.Env):
    """One maze episode as a gymnasium environment, written in plain Python (the
    reference for `BatchedMaze`); also `gymnasium.make("plasticity/Maze-v0", maze=MazeSpec())`.
    `reset(seed=...)` draws the layout from `np_random`; `reset(options={"layout": (goal,
    teleports)})` replays a given one. Episodes end by truncation after `maze.steps`
    steps. `render()` returns an RGB frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, maze: MazeSpec | None = None, render_mode: str | None = None):
        self.maze = maze or MazeSpec()
        self.render_mode = render_mode
        self.grid = self.maze.walls().tolist()
        self.cells = [tuple(int(v) for v in c) for c in self.maze.free_cells()]
        low = np.zeros(self.maze.obs_size, dtype=np.float32)
        high = np.ones(self.maze.obs_size, dtype=np.float32)
        n_view = self.maze.view ** 2
        low[n_view + 2], high[n_view + 2] = -self.maze.wall_penalty, self.maze.goal_reward
        self.observation_space = gymnasium.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(len(ACTIONS))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        spec = self.maze
        if options and "layout" in options:
            goal, teleports = options["layout"]
            self.goal_index, self.teleports = int(goal), [int(k) for k in teleports]
        else:
            start = self.cells.index(spec.start)
            goal = int(self.np_random.integers(len(self.cells) - 1))
            self.goal_index = goal + (goal >= start)
            self.teleports = [int(k) for k in self.np_random.integers(len(self.cells) - 1, size=spec.steps)]
        self.goal = self.cells[self.goal_index]
        self.pos, self.found, self.t = spec.start, 0, 0
        self.prev_reward, self.prev_action = 0.0, None
        return self._observe(), {"position": self.pos, "goal": self.goal}

    def _wall(self, row: int, col: int) -> bool:
        n = self.maze.size
        return not (0 <= row < n and 0 <= col < n) or self.grid[row][col]

    def _observe(self) -> np.ndarray:
        r = self.maze.view // 2
        view = [float(self._wall(self.pos[0] + dr, self.pos[1] + dc))
                for dr in range(-r, r + 1) for dc in range(-r, r + 1)]
        action = [1.0 if a == self.prev_action else 0.0 for a in range(len(ACTIONS))]
        extra = [1.0, self.t / self.maze.steps, self.prev_reward]
        return np.array(view + extra + action, dtype=np.float32)

    def step(self, action):
        spec = self.maze
        if self.t >= spec.steps:
            raise PlasticityError(f"the episode is over after {spec.steps} steps: call reset()")
        action = int(action)
        target = (self.pos[0] + ACTIONS[action][0], self.pos[1] + ACTIONS[action][1])
        reward = 0.0
        if self._wall(*target):
            reward -= spec.wall_penalty
        else:
            self.pos = target
        found = self.pos == self.goal
        if found:
            reward += spec.goal_reward
            k = self.teleports[self.found]
            self.pos = self.cells[k + 1 if k >= self.goal_index else k]
            self.found += 1
        self.prev_reward, self.prev_action = reward, action
        self.t += 1
        info = {"position": self.pos, "goal": self.goal, "goal_found": found}
        return self._observe(), reward, False, self.t >= spec.steps, info

    def render(self):
        return render_frame(self.maze.walls(), self.pos, self.goal)


COLOURS = {"wall": (60, 60, 70), "free": (245, 245, 245), "goal": (40, 170, 70), "agent": (220, 50, 40),
           "trail": (250, 200, 190)}


def render_frame(walls: np.ndarray, agent, goal, trail=(), scale: int = 16) -> np.ndarray:
    """`[H, W, 3]` uint8 image of the maze: walls, the recent `trail` of cells, the goal, the agent."""
    image = np.where(walls[..., None], COLOURS["wall"], COLOURS["free"]).astype(np.uint8)
    for cell in trail:
        image[tuple(cell)] = COLOURS["trail"]
    image[tuple(goal)] = COLOURS["goal"]
    image[tuple(agent)] = COLOURS["agent"]
    return image.repeat(scale, 0).repeat(scale, 1)


gymnasium.register("plasticity/Maze-v0", entry_point=MazeEnv)
