"""Tasks keyed by name: each builds batches of episodes and scores outputs."""

from plasticity.tasks.base import TASKS, EpisodicTask, register_task
from plasticity.tasks.images import ImageEpisode, ImageTask
from plasticity.tasks.omniglot import OmniglotEpisode, OmniglotTask
from plasticity.tasks.patterns import PatternEpisode, PatternTask

__all__ = ["TASKS", "EpisodicTask", "ImageEpisode", "ImageTask", "OmniglotEpisode", "OmniglotTask", "PatternEpisode",
           "PatternTask", "make_task", "register_task"]


def make_task(cfg, split: str | None = None):
    """The task object named by `cfg.task`, built from `cfg`; with `split`, drawing its
    episodes from that data split (tasks with data), loading only what that split needs."""
    import inspect

    from plasticity.errors import check_choice

    check_choice("task", cfg.task, TASKS)
    cls = TASKS[cfg.task]
    if split is None:
        return cls(cfg)
    if "split" in inspect.signature(cls).parameters and hasattr(cls, "SPLITS") and split in cls.SPLITS:
        return cls(cfg, split=split)
    task = cls(cfg)
    return task.for_split(split) if hasattr(task, "for_split") else task
