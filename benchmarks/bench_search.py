"""Benchmark: is the sweep's search any good? TPE + ASHA (the default sweep) against
random search + FIFO and random search + ASHA on the pattern task, same trial count.

For every searcher seed it runs each strategy as a real sweep (`tune.sweep.run_sweep`,
local Ray, tracking off: the comparison is about the search) and reads every report of
every trial (its episodes, its score `objective`, its time). The target of a seed is
random + FIFO's best score; for each strategy the table gives the trial-episodes (summed
over all trials, in the order the reports arrived) and the wall time it spent until a
trial's score first reached that target, as a fraction of the whole random + FIFO sweep
(what a user pays for random search's answer; random itself may find its best early, by
luck). A strategy that never reaches it counts with everything it spent (marked `>`).

    python benchmarks/bench_search.py --seeds 0 1 2 3 4 --num-samples 32     # the README table
    python benchmarks/bench_search.py --smoke-test
    python benchmarks/bench_search.py --table-from search.json               # reprint
    python benchmarks/bench_search.py --table-from search.json --seeds 2 3 4  # some seeds only

Every sweep's reports are kept in --out (JSON) as they finish, so the table can be
reprinted or extended (`--seeds 5 6`) without running the finished sweeps again.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

STRATEGIES: dict[str, dict] = {
    "tpe+asha": {"search": "optuna", "scheduler": "asha"},
    "random+fifo": {"search": "random", "scheduler": "fifo"},
    "random+asha": {"search": "random", "scheduler": "asha"},
    # Variants of the default, to choose its settings by measurement:
    "tpe-independent+asha": {"search": "optuna", "scheduler": "asha", "multivariate": False},
    "tpe-group+asha": {"search": "optuna", "scheduler": "asha", "group": True},
    "tpe-start5+asha": {"search": "optuna", "scheduler": "asha", "startup_trials": 5},
    "tpe+asha-rf3": {"search": "optuna", "scheduler": "asha", "reduction_factor": 3.0},
    "tpe+asha-g1": {"search": "optuna", "scheduler": "asha", "grace_period": 1000},
}
"""Name -> SweepArgs fields. The first is the default sweep; `random+fifo` sets the target."""
BASELINE = "random+fifo"


def run_strategy(name: str, seed: int, args, workdir: Path) -> dict:
    from tune.sweep import SweepArgs, run_sweep

    sweep_args = SweepArgs(task="patterns", preset=args.preset, num_samples=args.num_samples,
                           max_episodes=args.max_episodes, no_tracking=True, seed=seed,
                           name=f"{name.replace('+', '-')}-{seed}", storage=f"sqlite:///{workdir / 'optuna.db'}",
                           storage_path=str(workdir / "ray"), max_concurrent=args.max_concurrent,
                           **STRATEGIES[name])
    t0 = time.time()
    grid = run_sweep(sweep_args)
    wall = time.time() - t0
    reports = []
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or "objective" not in frame:
            continue
        for row in frame.to_dict("records"):
            if isinstance(row.get("objective"), float) and math.isfinite(row["objective"]):
                reports.append({"trial": result.metrics.get("trial_id"), "episodes": int(row["episodes"]),
                                "objective": row["objective"], "t": row["timestamp"] - t0})
    return {"strategy": name, "seed": seed, "trials": len(grid), "wall_s": wall, "reports": reports}


def spent_until(run: dict, target: float) -> tuple[int, float, bool]:
    """(trial-episodes, seconds, reached) when a report first scored <= target: each trial
    counts the episodes of its latest report up to then. Not reached: all of it."""
    done: dict[str, int] = {}
    for r in sorted(run["reports"], key=lambda r: (r["t"], r["episodes"])):
        done[r["trial"]] = max(done.get(r["trial"], 0), r["episodes"])
        if r["objective"] <= target:
            return sum(done.values()), r["t"], True
    return sum(done.values()), run["wall_s"], False


def total_episodes(run: dict) -> int:
    """Trial-episodes the whole sweep spent (each trial's last report)."""
    last: dict[str, int] = {}
    for r in run["reports"]:
        last[r["trial"]] = max(last.get(r["trial"], 0), r["episodes"])
    return sum(last.values())


def table(runs: list[dict]) -> str:
    """Per seed and strategy, then mean (min-max) over seeds of the cost to reach the
    target as a fraction of the whole random + FIFO sweep (what a user pays for its answer)."""
    seeds = sorted({r["seed"] for r in runs if r["strategy"] == BASELINE})
    by = {(r["strategy"], r["seed"]): r for r in runs}
    names = list(dict.fromkeys(r["strategy"] for r in runs))
    head = (f"{'strategy':<22}{'seed':>5}{'best':>9}{'episodes':>11}{'to target':>11}{'x random':>9}"
            f"{'wall s':>8}{'to target':>11}{'x random':>9}")
    lines = [head, "-" * len(head)]
    ratios: dict[str, dict[str, list[float]]] = {n: {"episodes": [], "wall": [], "reached": [], "best": [],
                                                     "spent": []} for n in names}
    for seed in seeds:
        base = by[(BASELINE, seed)]
        target = min(r["objective"] for r in base["reports"])
        base_eps, base_wall = total_episodes(base), base["wall_s"]
        for name in names:
            run = by.get((name, seed))
            if run is None or not run["reports"]:
                continue
            eps, t, reached = spent_until(run, target)
            mark = "" if reached else ">"
            ratios[name]["episodes"].append(eps / base_eps)
            ratios[name]["wall"].append(t / base_wall)
            ratios[name]["reached"].append(float(reached))
            ratios[name]["best"].append(min(r["objective"] for r in run["reports"]))
            ratios[name]["spent"].append(total_episodes(run) / base_eps)
            lines.append(f"{name:<22}{seed:>5}{min(r['objective'] for r in run['reports']):>9.4f}"
                         f"{total_episodes(run):>11,}{mark + format(eps, ','):>11}"
                         f"{mark + format(eps / base_eps, '.2f'):>9}{run['wall_s']:>8.0f}"
                         f"{mark + format(t, '.0f'):>11}{mark + format(t / base_wall, '.2f'):>9}")
    lines += ["", "x random: the cost until a trial first scored <= random+fifo's best, as a fraction of the",
              "whole random+fifo sweep (its trial-episodes, its wall time); '>': never reached (all it spent)", "",
              f"{'strategy':<22}{'reached':>8}{'episodes x random: mean (min-max)':>36}"
              f"{'wall x random: mean (min-max)':>32}{'final best: mean':>18}{'spent x random':>16}"]
    for name in names:
        e, w, hit = ratios[name]["episodes"], ratios[name]["wall"], ratios[name]["reached"]
        if e:
            spread = (lambda v: f"{statistics.mean(v):.2f} ({min(v):.2f}-{max(v):.2f})")
            lines.append(f"{name:<22}{f'{int(sum(hit))}/{len(hit)}':>8}{spread(e):>36}{spread(w):>32}"
                         f"{statistics.mean(ratios[name]['best']):>18.4f}{statistics.mean(ratios[name]['spent']):>16.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--max-episodes", type=int, default=8000)
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES)[:3], choices=list(STRATEGIES))
    ap.add_argument("--out", type=Path, default=Path("bench_search.json"),
                    help="JSON file the sweeps' reports are kept in (and read back from)")
    ap.add_argument("--table-from", type=Path, help="only print the table of a saved --out file")
    ap.add_argument("--smoke-test", action="store_true", help="1 seed, 2 trials of 512 episodes")
    args = ap.parse_args()
    if args.smoke_test:
        args.num_samples, args.max_episodes, args.seeds = 2, 512, args.seeds[:1]
    key = [args.num_samples, args.max_episodes, args.preset, args.max_concurrent]
    if args.table_from:
        # The runs of this setting only (a file may also hold a smoke test's).
        print(table([r for r in json.loads(args.table_from.read_text())
                     if r.get("setting") == key and r["seed"] in args.seeds]))
        return
    if BASELINE not in args.strategies:
        sys.exit(f"bench_search: --strategies must include {BASELINE} (it sets the target)")
    saved = json.loads(args.out.read_text()) if args.out.is_file() else []
    runs = [r for r in saved if r.get("setting") == key]
    from plasticity.localray import start_local_ray
    from plasticity.nn.fused import build_kernels

    # Kernels built and Ray started once, before the first sweep: no strategy's wall time holds them.
    # A private Ray on 127.0.0.1 with its own token, as the sweep starts.
    build_kernels()
    start_local_ray(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False,
                    configure_logging=False)
    with tempfile.TemporaryDirectory() as d:
        for seed in args.seeds:
            for name in args.strategies:
                if any(r["strategy"] == name and r["seed"] == seed for r in runs):
                    continue
                run = {**run_strategy(name, seed, args, Path(d)), "setting": key}
                runs.append(run)
                saved.append(run)
                args.out.write_text(json.dumps(saved))
    print(f"\n{args.num_samples} trials per sweep, up to {args.max_episodes} episodes each "
          f"({args.preset} preset), {args.max_concurrent} at a time; target: random+fifo's best objective")
    print(table(runs))


if __name__ == "__main__":
    main()
