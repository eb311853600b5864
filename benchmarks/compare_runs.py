"""Compare training runs: reads each run folder's metrics.jsonl, prints a held-out
metric against episodes and wall time, and draws the curves in one figure.

    python benchmarks/compare_runs.py runs/patterns__plastic__* runs/patterns__rnn__* \
        --out docs/patterns_reference.png
    python benchmarks/compare_runs.py runs/images__* --metric eval/erased_loss --x minutes \
        --title "image completion, small preset" --out docs/images_small.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plasticity.plots import curves_figure, save_figure


def load(run: Path) -> tuple[str, list[dict]]:
    cfg = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    label = cfg["model"] if cfg["model"] != "plastic" else f"plastic ({cfg['rule']})"
    return label, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--metric", default="eval/bit_error_all")
    ap.add_argument("--x", choices=["episodes", "minutes"], default="episodes", help="the figure's x axis")
    ap.add_argument("--title", default="pattern completion, reference preset (1000 bits, 106 steps)")
    ap.add_argument("--out", type=Path, help="PNG with the curves")
    args = ap.parse_args()
    curves = {}
    for run in args.runs:
        label, rows = load(run)
        xs = [r["step"] if args.x == "episodes" else r["perf/elapsed_s"] / 60 for r in rows]
        curves[label] = (xs, [max(r[args.metric], 1e-4) for r in rows])
        print(f"\n{label} ({run.name})")
        print(f"{'episodes':>9} {'minutes':>8} {args.metric:>15}")
        for r in rows:
            print(f"{r['step']:>9} {r['perf/elapsed_s'] / 60:>8.1f} {r[args.metric]:>15.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        xlabel = "training episodes" if args.x == "episodes" else "training minutes (2 CPU cores)"
        fig = curves_figure(curves, xlabel=xlabel, ylabel=f"held-out {args.metric}", title=args.title)
        save_figure(fig, args.out)
        print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
