"""Summarise maze runs: for each model, the mean reward per episode after training (over
seeds), scored on fresh episodes from each run's final checkpoint, the training time,
and one figure with the learning curves (mean over seeds, band = min..max).

    python benchmarks/maze_table.py runs/maze_results/maze__* --episodes 512 --out docs/maze_small.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from plasticity.config import MazeConfig
from plasticity.plots import plt, save_figure
from plasticity.train.a2c import evaluate_checkpoint

ORDER = ("rnn", "plastic", "neuromod", "retroactive")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--episodes", type=int, default=512, help="fresh episodes to score each checkpoint on")
    ap.add_argument("--seed", type=int, default=12345, help="seed of the fresh episodes (the same for every run)")
    ap.add_argument("--out", type=Path, help="PNG with the learning curves")
    args = ap.parse_args()
    torch.set_num_threads(2)
    by_model: dict[str, list[dict]] = defaultdict(list)
    for run in sorted(args.runs):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        scored = evaluate_checkpoint(run / "checkpoint.pt", MazeConfig, episodes=args.episodes, seed=args.seed,
                                     figure=run / "evaluation.png")
        cfg = scored["config"]
        by_model[cfg.model].append({"seed": cfg.seed, "episodes": scored["episode"], "rows": rows,
                                    "metrics": scored["metrics"], "minutes": rows[-1]["perf/elapsed_s"] / 60,
                                    "params": rows[-1]["model/params"], "label": cfg.model})
    print(f"| model | params | training episodes | seeds | return per seed ({args.episodes} fresh episodes each) "
          "| mean ± sd over seeds | goals per episode | minutes per run |")
    print("|---|---|---|---|---|---|---|---|")
    for model in sorted(by_model, key=lambda m: ORDER.index(m) if m in ORDER else 99):
        runs = sorted(by_model[model], key=lambda r: r["seed"])
        returns = [r["metrics"]["return"] for r in runs]
        sd = statistics.stdev(returns) if len(returns) > 1 else 0.0
        goals = statistics.mean(r["metrics"]["goals"] for r in runs)
        minutes = [r["minutes"] for r in runs]
        print(f"| {model} | {runs[0]['params']:,} | {runs[0]['episodes']:,} | {len(runs)} | "
              f"{', '.join(f'{v:.1f}' for v in returns)} | **{statistics.mean(returns):.1f} ± {sd:.1f}** | "
              f"{goals:.2f} | {min(minutes):.1f}-{max(minutes):.1f} |")
    if args.out:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for model in sorted(by_model, key=lambda m: ORDER.index(m) if m in ORDER else 99):
            runs = by_model[model]
            steps = [row["step"] for row in runs[0]["rows"]]
            curves = [[row["eval/return"] for row in r["rows"]] for r in runs]
            n = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
            ax.plot(steps[:n], mean, marker="o", markersize=3, label=f"{model} ({len(runs)} seeds)")
            ax.fill_between(steps[:n], [min(c[i] for c in curves) for i in range(n)],
                            [max(c[i] for c in curves) for i in range(n)], alpha=0.15)
        ax.set_xlabel("training episodes")
        ax.set_ylabel("held-out reward per episode")
        ax.set_title("maze 9x9, small preset (100 steps, 64 neurons)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, args.out)
        print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
