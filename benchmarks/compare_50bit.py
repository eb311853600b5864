"""The paper's comparison at equal wall time: 50-bit patterns, 2 patterns, 11 steps.

Trains, for each seed, the plastic network (51 neurons), the non-plastic RNN with 2000
extra neurons (2051) and an LSTM of 2000 units on `--preset small`, each for the same
wall time (`--minutes`, training and evaluation), and prints one table (held-out
all-bit error with its 95% interval, episodes done, per seed and mean) and one figure
of the error against wall time (`--figure`).

    python benchmarks/compare_50bit.py --seeds 0 1 2 --minutes 1 --figure docs/compare_50bit.png

The paper ran 1,000,000 episodes and 10 seeds; this is the same comparison on a small,
equal CPU budget, so it shows which network learns *within that budget*.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

MODELS = {
    "plastic (51)": dict(model="plastic"),
    "rnn (2051)": dict(model="rnn", extra_neurons=2000),
    "lstm (2000)": dict(model="lstm", hidden=2000),
}


def run(label: str, seed: int, args) -> list[dict]:
    from plasticity.config import preset
    from plasticity.train import train

    cfg = preset("patterns", "small", seed=seed, episodes=10**9, max_minutes=args.minutes,
                 eval_every=args.eval_every, eval_episodes=args.eval_episodes, save_every=10**9,
                 out=args.out, **MODELS[label])
    result = train(cfg, progress=False)
    return [{"model": label, "seed": seed, "episode": h["step"], "wall_s": h["perf/elapsed_s"],
             "err_all": h["eval/bit_error_all"], "err_all_ci95": h.get("eval/bit_error_all_ci95", float("nan")),
             "err_erased": h["eval/bit_error_erased"]} for h in result.history]


def figure(rows: list[dict], path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, label in enumerate(MODELS):
        for seed in sorted({r["seed"] for r in rows}):
            pts = [r for r in rows if r["model"] == label and r["seed"] == seed]
            ax.plot([r["wall_s"] for r in pts], [max(r["err_all"], 1e-4) for r in pts], color=f"C{i}",
                    marker="o", markersize=3, label=label if seed == min(r["seed"] for r in rows) else None)
    ax.axhline(0.25, color="gray", ls=":", lw=1, label="chance (0.25)")
    ax.set_yscale("log")
    ax.set_xlabel("wall time, training + evaluation (s)")
    ax.set_ylabel("held-out all-bit error")
    ax.set_title(f"50-bit patterns, 2 patterns, 11 steps: {minutes:g} min each")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=1.0, help="wall time per model and seed")
    ap.add_argument("--eval-every", type=int, default=1024, help="episodes between evaluations")
    ap.add_argument("--eval-episodes", type=int, default=512)
    ap.add_argument("--figure", type=Path, default=Path("docs/compare_50bit.png"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        print("compare_50bit: --minutes must be > 0", file=sys.stderr)
        return 2
    tmp = tempfile.TemporaryDirectory() if args.out is None else None
    args.out = args.out or tmp.name
    rows = []
    for seed in args.seeds:
        for label in MODELS:
            rows += run(label, seed, args)
            last = rows[-1]
            print(f"{label:<13} seed {seed}: {last['err_all']:.4f} after {last['episode']} episodes, "
                  f"{last['wall_s']:.0f} s", flush=True)
    print(f"\n{'model':<13} {'seed':>4} {'episodes':>9} {'wall s':>7} {'all-bit error':>18} {'erased-bit':>10}")
    for label in MODELS:
        finals = [max((r for r in rows if r["model"] == label and r["seed"] == s), key=lambda r: r["episode"])
                  for s in args.seeds]
        for r in finals:
            print(f"{label:<13} {r['seed']:>4} {r['episode']:>9} {r['wall_s']:>7.0f} "
                  f"{r['err_all']:>8.4f} +- {r['err_all_ci95']:.4f} {r['err_erased']:>10.4f}")
        print(f"{label:<13} {'mean':>4} {statistics.mean(r['episode'] for r in finals):>9.0f} "
              f"{statistics.mean(r['wall_s'] for r in finals):>7.0f} "
              f"{statistics.mean(r['err_all'] for r in finals):>8.4f} {'':>9} "
              f"{statistics.mean(r['err_erased'] for r in finals):>10.4f}")
    figure(rows, args.figure, args.minutes)
    print(f"figure: {args.figure}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
