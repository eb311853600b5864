"""Pictures of one maze episode: a figure of the whole trajectory and an animated GIF.

`Trajectory` holds one recorded episode: for each step the cell the move ended in
(`arrived`, before a teleport), the cell after it (`pos`), whether the goal was found,
and the reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from plasticity.envs.maze import MazeSpec, render_frame
from plasticity.plots import plt


class Trajectory(NamedTuple):
    goal: tuple[int, int]
    arrived: np.ndarray
    """`[T, 2]` cell at the end of each move (the goal itself on a goal step)."""
    pos: np.ndarray
    """`[T, 2]` cell after each step (the teleport destination on a goal step)."""
    found: np.ndarray
    """`[T]` bool, the goal was reached on this step."""
    rewards: np.ndarray
    """`[T]` reward of each step."""


def trajectory_figure(spec: MazeSpec, traj: Trajectory, title: str = ""):
    """Left: the maze, the goal and the agent's path (colour = time; a teleport starts a new
    segment). Right: cumulative reward over the episode, goal hits marked."""
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(9, 4), gridspec_kw={"width_ratios": [1, 1.3]})
    ax.imshow(spec.walls(), cmap="Greys", vmin=0, vmax=1.6)
    steps = len(traj.arrived)
    cmap = plt.get_cmap("viridis")
    prev = np.array(spec.start)
    for t in range(steps):
        a = traj.arrived[t]
        if (a != prev).any():
            ax.plot([prev[1], a[1]], [prev[0], a[0]], color=cmap(t / max(steps - 1, 1)), lw=2, alpha=0.8)
        prev = traj.pos[t]
    ax.plot(*spec.start[::-1], "o", color="black", ms=8, label="start")
    ax.plot(traj.goal[1], traj.goal[0], "*", color="tab:green", ms=18, label="goal (hidden)")
    ax.set_title(f"path over {steps} steps (dark = early)", fontsize=9)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    ax.axis("off")
    t = np.arange(1, steps + 1)
    ax_r.plot(t, np.cumsum(traj.rewards), color="tab:blue")
    hits = np.flatnonzero(traj.found)
    for h in hits:
        ax_r.axvline(h + 1, color="tab:green", alpha=0.3)
    ax_r.set_xlabel("step")
    ax_r.set_ylabel("cumulative reward")
    ax_r.set_title(f"{len(hits)} goals found (green lines), return {traj.rewards.sum():.1f}", fontsize=9)
    ax_r.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_gif(spec: MazeSpec, traj: Trajectory, path: str | Path, *, trail: int = 6, scale: int = 16,
             ms_per_frame: int = 120) -> Path:
    """An animated GIF of the episode: one frame per step, with the last `trail` cells."""
    walls = spec.walls()
    frames = []
    for t in range(len(traj.arrived)):
        recent = [tuple(c) for c in traj.arrived[max(0, t - trail):t]]
        frames.append(Image.fromarray(render_frame(walls, tuple(traj.arrived[t]), traj.goal, recent, scale)))
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return path
