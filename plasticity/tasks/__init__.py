"""Tasks keyed by name: what each draws, how it is scored, and the model it builds.

    base.py      Task (hooks every task has), EpisodicTask (supervised episodes), the registry
    patterns.py, images.py, omniglot.py   the supervised tasks (EpisodicTask)
    maze.py      the maze task: its layouts and its actor-critic agent (trained by A2C)

`build_model` imports `plasticity.models` inside the function, figures `plasticity.plots`.

May import: plasticity.errors, plasticity.data, plasticity.envs, plasticity.agents, numpy, torch
May import in functions: plasticity.models, plasticity.plots
"""

from plasticity.tasks.base import TASKS, EpisodicTask, Task, register_task, served_tasks
from plasticity.tasks.images import ImageEpisode, ImageTask
from plasticity.tasks.maze import MazeTask
from plasticity.tasks.omniglot import OmniglotEpisode, OmniglotTask
from plasticity.tasks.patterns import PatternEpisode, PatternTask

__all__ = ["TASKS", "EpisodicTask", "ImageEpisode", "ImageTask", "MazeTask", "OmniglotEpisode", "OmniglotTask",
           "PatternEpisode", "PatternTask", "Task", "make_task", "register_task", "served_tasks"]


def make_task(cfg, split: str | None = None):
    """The task object named by `cfg.task`, built from `cfg`; with `split`, drawing its
    episodes from that data split (tasks with data), loading only what that split needs."""
    from plasticity.errors import check_choice

    check_choice("task", cfg.task, TASKS)
    cls = TASKS[cfg.task]
    if split is None:
        return cls(cfg)
    if split in cls.SPLITS:
        return cls(cfg, split=split)
    return cls(cfg).for_split(split)  # an unknown split: the task's own one-line error
