"""Reinforcement-learning environments: batched tensor versions for training, and
gymnasium-compatible single-environment versions beside them (the references)."""

from plasticity.envs.maze import ACTIONS, BatchedMaze, MazeEnv, MazeLayout, MazeSpec, draw_layout

__all__ = ["ACTIONS", "BatchedMaze", "MazeEnv", "MazeLayout", "MazeSpec", "draw_layout"]
