"""One-shot classification on Omniglot (Miconi et al. 2018, task 3), N-way 1-shot.

An episode shows one drawing of each of `n_way` characters with its label (one-hot,
scaled by `label_gain` onto the output layer), in random order, then a new drawing of
one of them without a label; the network must name its class at the last step. Each
character gets one random rotation by k * 90 degrees per episode (`rotations`), which
makes the rotations extra classes as in the paper.

Characters are split into train / validation / test, seeded and stored with the
checkpoint (`split` = `paper`: background set for train + validation, evaluation set
for test; `random`: a seeded split of every character found). No character, in any
rotation, is in two splits. The official one-shot runs (`all_runs.zip`) give a fourth
split, `runs`: N-way episodes built from each run's 20 training images and test items.

    task = OmniglotTask(cfg); ep = task.sample(32, generator)
    probs, _ = model(task.inputs(ep)); task.loss(probs, ep), task.metrics(probs, ep)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from plasticity.data import DataError, OmniglotSet, load_omniglot, load_omniglot_runs
from plasticity.errors import CheckpointError
from plasticity.tasks.base import EpisodicTask, register_task

SPLITS = ("train", "validation", "test", "runs")


@dataclass
class OmniglotEpisode:
    images: Tensor
    """`[B, T, 1, 31, 31]`: the n_way labelled drawings, then the query (T = n_way + 1)."""
    labels: Tensor
    """`[B, T, n_way]`: one-hot label on the presentation steps, zeros on the query step."""
    target: Tensor
    """`[B]` int: the query's class."""


def split_characters(data: OmniglotSet, how: str, seed: int, val_fraction: float,
                     test_fraction: float) -> dict[str, list[str]]:
    """Character names per split; `how` is `paper`, `random` or `auto` (paper when the
    full background and evaluation sets are both present)."""
    names = list(data.names)
    full = {"images_background", "images_evaluation"} <= set(data.sets)
    if how == "auto":
        how = "paper" if full else "random"
    rng = np.random.default_rng(seed)
    if how == "paper":
        if not full:
            raise DataError("split 'paper' needs images_background.zip and images_evaluation.zip: "
                            "run `plasticity data download omniglot`, or pass --split random")
        test = [n for n, s in zip(names, data.sets, strict=True) if s == "images_evaluation"]
        rest = [n for n, s in zip(names, data.sets, strict=True) if s != "images_evaluation"]
        n_val = round(val_fraction * len(rest))
        perm = rng.permutation(len(rest))
        val = sorted(rest[i] for i in perm[:n_val])
        train = sorted(rest[i] for i in perm[n_val:])
        return {"train": train, "validation": val, "test": sorted(test)}
    perm = rng.permutation(len(names))
    n_test, n_val = round(test_fraction * len(names)), round(val_fraction * len(names))
    test = sorted(names[i] for i in perm[:n_test])
    val = sorted(names[i] for i in perm[n_test:n_test + n_val])
    train = sorted(names[i] for i in perm[n_test + n_val:])
    return {"train": train, "validation": val, "test": test}


@register_task("omniglot")
class OmniglotTask(EpisodicTask):
    SPLITS = SPLITS
    eval_chunk = 256

    def __init__(self, cfg, split: str = "train", splits: dict[str, list[str]] | None = None, data=None):
        self.cfg, self.split, self.n_way = cfg, split, cfg.n_way
        self.n_io = cfg.n_way
        self.steps = cfg.n_way + 1
        sets = tuple(s for s in cfg.sets.split(",") if s) or None
        self.data = data if data is not None else load_omniglot(cfg.data_dir, sets)
        self.splits = splits or split_characters(self.data, cfg.split, cfg.split_seed, cfg.val_fraction,
                                                 cfg.test_fraction)
        check_disjoint(self.splits)
        if split == "runs":
            runs = load_omniglot_runs(cfg.data_dir)
            self.runs = tuple(torch.from_numpy(a) for a in (runs.support, runs.queries, runs.answers))
            return
        index = {n: i for i, n in enumerate(self.data.names)}
        chosen = self.splits[split]
        if len(chosen) < cfg.n_way:
            raise DataError(f"the Omniglot {split} split has {len(chosen)} characters, fewer than n_way = "
                            f"{cfg.n_way}: use more data (plasticity data download omniglot) or change the fractions")
        self.images = torch.from_numpy(self.data.images[[index[n] for n in chosen]])  # [C, D, 31, 31]

    def for_split(self, split: str) -> OmniglotTask:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} for the omniglot task: choose one of {', '.join(SPLITS)}")
        if split == self.split:
            return self
        return OmniglotTask(self.cfg, split, self.splits, self.data)

    def heldout(self) -> OmniglotTask:
        return self.for_split("validation")

    def state(self) -> dict:
        """Stored with the checkpoint: the character split."""
        return {"splits": self.splits}

    def check_state(self, state: dict | None, source: str) -> None:
        """Refuse to evaluate or resume on a different split than training used."""
        if not state or "splits" not in state:
            return
        if state["splits"] != self.splits:
            raise CheckpointError(f"{source} was trained on a different Omniglot character split than the data "
                                  "here gives: use the same --data-dir and sets as for training")

    def build_model(self, cfg):
        from plasticity.models import OmniglotNet

        return OmniglotNet(cfg)

    def sample(self, batch: int, generator: torch.Generator) -> OmniglotEpisode:
        if self.split == "runs":
            return self._sample_runs(batch, generator)
        g, k = generator, self.n_way
        n_chars, depth = self.images.shape[:2]
        chars = torch.stack([torch.randperm(n_chars, generator=g)[:k] for _ in range(batch)])  # [B, K]
        # Two different drawings of each character: one to show, one to query with.
        draws = torch.rand(batch, k, depth, generator=g).argsort(-1)[..., :2]
        shown = self.images[chars, draws[..., 0]]  # [B, K, 31, 31]
        query_class = torch.randint(0, k, (batch,), generator=g)
        rows = torch.arange(batch)
        query = self.images[chars[rows, query_class], draws[rows, query_class, 1]]  # [B, 31, 31]
        images = torch.cat([shown, query.unsqueeze(1)], 1)  # [B, K + 1, 31, 31]
        if self.cfg.rotations:
            turns = torch.randint(0, 4, (batch, k), generator=g)
            turns = torch.cat([turns, turns[rows, query_class].unsqueeze(1)], 1)
            images = rotate(images, turns)
        return self._episode(images, query_class, g)

    def _sample_runs(self, batch: int, g: torch.Generator) -> OmniglotEpisode:
        """N-way episodes from the official runs: a test item, its class's training image
        and n_way - 1 other training images of the same run."""
        support, queries, answers = self.runs
        n_runs, n_items = answers.shape
        run = torch.randint(0, n_runs, (batch,), generator=g)
        item = torch.randint(0, n_items, (batch,), generator=g)
        correct = answers[run, item]
        others = torch.rand(batch, support.shape[1], generator=g)
        others[torch.arange(batch), correct] = 2.0  # never drawn as a distractor
        classes = torch.cat([correct.unsqueeze(1), others.argsort(-1)[:, :self.n_way - 1]], 1)
        shown = support[run.unsqueeze(1), classes]  # [B, K, 31, 31], the true class first
        images = torch.cat([shown, queries[run, item].unsqueeze(1)], 1)
        return self._episode(images, torch.zeros(batch, dtype=torch.long), g)

    def _episode(self, images: Tensor, query_class: Tensor, g: torch.Generator) -> OmniglotEpisode:
        """Shuffle the presentation order and the class labels, add the label signal."""
        batch, k = images.shape[0], self.n_way
        order = torch.rand(batch, k, generator=g).argsort(-1)  # presentation order of the classes
        label_of = torch.rand(batch, k, generator=g).argsort(-1)  # class -> label index
        rows = torch.arange(batch).unsqueeze(1)
        shown = images[rows, order]
        images = torch.cat([shown, images[:, k:]], 1).unsqueeze(2).float()
        labels = torch.zeros(batch, k + 1, k)
        labels[:, :k] = F.one_hot(label_of[rows, order], k).float()
        target = label_of[torch.arange(batch), query_class]
        return OmniglotEpisode(images, labels, target)

    def inputs(self, episode: OmniglotEpisode) -> tuple[Tensor, Tensor]:
        return episode.images, episode.labels

    def loss(self, outputs: Tensor, episode: OmniglotEpisode) -> Tensor:
        """Binary cross-entropy between the class probabilities at the query step and the one-hot answer."""
        probs = outputs[:, -1].clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(probs, F.one_hot(episode.target.to(probs.device), self.n_way).to(probs))

    def metrics(self, outputs: Tensor, episode: OmniglotEpisode) -> dict[str, float]:
        """`accuracy` of the answer at the query step (chance 1 / n_way) and the `loss`."""
        final = outputs.detach().cpu()
        correct = (final[:, -1].argmax(-1) == episode.target).float()
        return {"loss": float(self.loss(final, episode)), "accuracy": float(correct.mean())}

    def figure(self, outputs: Tensor, episode: OmniglotEpisode, index: int = 0):
        from plasticity.plots import oneshot_figure

        labels = episode.labels[index, :self.n_way].argmax(-1).tolist()
        return oneshot_figure(episode.images[index, :, 0], labels, outputs[index, -1].detach().cpu(),
                              int(episode.target[index]))


def rotate(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate each `[..., H, W]` image by `turns * 90` degrees (`turns` has the leading shape)."""
    out = images.clone()
    for k in (1, 2, 3):
        mask = turns == k
        if mask.any():
            out[mask] = torch.rot90(images[mask], k, dims=(-2, -1))
    return out


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """No character may be in two splits (the pitfall of the 2018 evaluation)."""
    seen: dict[str, str] = {}
    for split, names in splits.items():
        for n in names:
            if n in seen:
                raise DataError(f"character {n} is in both the {seen[n]} and the {split} split: "
                                "the split is broken; report this")
            seen[n] = split
