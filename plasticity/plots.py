"""Matplotlib figures (Agg backend, no display needed).

May import: plasticity.errors, matplotlib, torch
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from plasticity.errors import StorageError  # noqa: E402


def _grid_shape(size: int) -> tuple[int, int]:
    """The most square `rows x cols == size` layout (1 x size for primes)."""
    rows = int(math.isqrt(size))
    while size % rows:
        rows -= 1
    return rows, size // rows


def panels_figure(panels: list[tuple[str, Tensor]]):
    """A row of titled grayscale images `[H, W]`, values in [-1, 1]."""
    fig, axes = plt.subplots(1, len(panels), figsize=(1.8 * len(panels), 2.2))
    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(image.float().numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def completion_figure(patterns: Tensor, cue: Tensor, target: Tensor, output: Tensor):
    """Stored patterns `[K, P]`, the degraded cue, the network's output and the target."""
    shape = _grid_shape(patterns.shape[-1])
    panels = [(f"pattern {k + 1}", p) for k, p in enumerate(patterns)]
    panels += [("cue (degraded)", cue), ("network output", output), ("target", target)]
    return panels_figure([(title, image.reshape(shape)) for title, image in panels])


def reconstruction_figure(images: list[Tensor], cue: Tensor, output: Tensor, target: Tensor):
    """The images shown `[H, W]` each, the half-erased cue, the network's output and the target."""
    panels = [(f"image {k + 1}", im) for k, im in enumerate(images)]
    return panels_figure(panels + [("cue (half erased)", cue), ("network output", output.clamp(-1, 1)),
                                   ("target", target)])


def oneshot_figure(images: Tensor, labels: list[int], probs: Tensor, target: int):
    """One-shot episode: the labelled drawings `[K, H, W]`, the query (last image) and
    the network's class probabilities."""
    k = len(labels)
    fig, axes = plt.subplots(1, k + 2, figsize=(1.6 * (k + 2), 2.2))
    for j in range(k + 1):
        axes[j].imshow(images[j].float().numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[j].set_title(f"label {labels[j]}" if j < k else f"query ({target})", fontsize=8)
        axes[j].axis("off")
    axes[-1].bar(range(k), probs.float().numpy(), color=["C2" if i == target else "C0" for i in range(k)])
    axes[-1].set_ylim(0, 1)
    axes[-1].set_title("output", fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(curves: dict[str, tuple[list[float], list[float]]], *, xlabel: str, ylabel: str,
                  title: str = "", logy: bool = True):
    """One line per name: `{name: (xs, ys)}`."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=name, marker="o", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> None:
    """Write `fig` to `path` (PNG) and close it; a failed write is a one-line `StorageError`."""
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise StorageError(f"cannot write the figure {path} ({e.strerror or e}): free disk space or pass --out "
                           "with a writable folder") from None
    finally:
        plt.close(fig)


def learning_curve_png(history: list[dict], run_dir: Path, keys: tuple[str, ...], *, ylabel: str,
                       logy: bool = True) -> Path | None:
    """`run_dir/learning_curve.png`: the metrics `keys` (those present) against training
    episodes, from a run's evaluation history; None if none of them is there."""
    keys = [k for k in keys if history and k in history[0]]
    if not keys:
        return None
    steps = [h["step"] for h in history]
    floor = 1e-5 if logy else float("-inf")  # a zero error on a log axis
    fig = curves_figure({k: (steps, [max(h[k], floor) for h in history]) for k in keys},
                        xlabel="training episodes", ylabel=ylabel, logy=logy)
    path = Path(run_dir) / "learning_curve.png"
    save_figure(fig, path)
    return path
