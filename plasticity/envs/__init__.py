"""Reinforcement-learning environments: batched tensor versions for training, and
gymnasium-compatible single-environment versions beside them (the references).

    maze.py    MazeSpec, draw_layout, BatchedMaze (training), MazeEnv (gymnasium reference)
    render.py  a played episode as a figure and a GIF

The maze *task* (its layouts and agent) is `plasticity.tasks.maze`.

May import: plasticity.errors, plasticity.plots, numpy, torch, gymnasium, PIL
"""

from plasticity.envs.maze import ACTIONS, BatchedMaze, MazeEnv, MazeLayout, MazeSpec, draw_layout

__all__ = ["ACTIONS", "BatchedMaze", "MazeEnv", "MazeLayout", "MazeSpec", "draw_layout"]
