"""Benchmark: TPE + ASHA against random search + FIFO on the pattern task, with the
same trial budget. Prints, for each strategy, the best objective reached (held-out
loss, and the bit error of that trial), the total training episodes spent over all
trials, and the wall time.

    python benchmarks/bench_search.py                     # 16 trials each, small preset
    python benchmarks/bench_search.py --num-samples 8 --max-episodes 4000
    python benchmarks/bench_search.py --smoke-test

Runs on a local Ray with tracking off (the comparison is about the search itself);
the Optuna studies go to a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from tune.sweep import SweepArgs, run_sweep


def strategy(search: str, scheduler: str, args, workdir: Path, seed: int) -> dict:
    sweep_args = SweepArgs(task="patterns", preset="small", num_samples=args.num_samples,
                           max_episodes=args.max_episodes, search=search, scheduler=scheduler,
                           no_tracking=True, seed=seed, name=f"{search}-{scheduler}-{seed}",
                           storage=f"sqlite:///{workdir / 'optuna.db'}", storage_path=str(workdir / "ray"),
                           max_concurrent=args.max_concurrent)
    t0 = time.perf_counter()
    results = run_sweep(sweep_args)
    wall = time.perf_counter() - t0
    finished = [r.metrics for r in results if r.error is None and r.metrics]
    best = min(finished, key=lambda m: m.get("eval/loss", math.inf)) if finished else {}
    return {"strategy": f"{search}+{scheduler}", "seed": seed, "trials": len(results),
            "best_loss": best.get("eval/loss", math.nan), "best_bit_error": best.get("eval/bit_error_all", math.nan),
            "episodes": sum(m.get("episodes", 0) for m in finished), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--max-episodes", type=int, default=8000)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--smoke-test", action="store_true")
    args = ap.parse_args()
    if args.smoke_test:
        args.num_samples, args.max_episodes = 2, 512
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for seed in args.seeds:
            for search, scheduler in (("optuna", "asha"), ("random", "fifo")):
                rows.append(strategy(search, scheduler, args, Path(d), seed))
    print(f"\n{args.num_samples} trials per strategy, up to {args.max_episodes} episodes each (small preset)")
    header = (f"{'strategy':<14} {'seed':>4} {'best eval/loss':>15} {'its bit error':>14} "
              f"{'episodes spent':>15} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['strategy']:<14} {r['seed']:>4} {r['best_loss']:>15.4f} {r['best_bit_error']:>14.4f} "
              f"{r['episodes']:>15,} {r['wall_s']:>7.0f}")


if __name__ == "__main__":
    main()
