"""Tasks keyed by name: each builds batches of episodes and scores outputs."""

from plasticity.tasks.base import TASKS, EpisodicTask, register_task
from plasticity.tasks.images import ImageEpisode, ImageTask
from plasticity.tasks.omniglot import OmniglotEpisode, OmniglotTask
from plasticity.tasks.patterns import PatternEpisode, PatternTask

__all__ = ["TASKS", "EpisodicTask", "ImageEpisode", "ImageTask", "OmniglotEpisode", "OmniglotTask", "PatternEpisode",
           "PatternTask", "make_task", "register_task"]


def make_task(cfg):
    """The task object named by `cfg.task`, built from `cfg`."""
    from plasticity.errors import check_choice

    check_choice("task", cfg.task, TASKS)
    return TASKS[cfg.task](cfg)
