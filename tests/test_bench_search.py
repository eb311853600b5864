"""The search benchmark's accounting (benchmarks/bench_search.py) on made-up reports:
the cost to reach the target counts each trial's episodes as of the moment it is reached."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).parents[1] / "benchmarks/bench_search.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def run(strategy, seed, reports, wall=100.0):
    return {"strategy": strategy, "seed": seed, "wall_s": wall,
            "reports": [dict(zip(("trial", "episodes", "objective", "t"), r, strict=True)) for r in reports]}


RANDOM = run("random+fifo", 0, [("a", 100, 0.5, 1), ("b", 100, 0.4, 2), ("a", 200, 0.3, 3), ("b", 200, 0.2, 4)])
TPE = run("tpe+asha", 0, [("x", 100, 0.3, 1), ("y", 100, 0.19, 2), ("x", 200, 0.1, 3)], wall=50.0)
NEVER = run("random+asha", 0, [("a", 100, 0.5, 1), ("b", 100, 0.4, 2)], wall=20.0)


def test_cost_counts_every_trial_up_to_the_first_report_at_the_target():
    assert bench.spent_until(RANDOM, 0.2) == (400, 4, True)
    assert bench.spent_until(TPE, 0.2) == (200, 2, True)  # x at 100 and y at 100
    assert bench.spent_until(NEVER, 0.2) == (200, 20.0, False)
    assert bench.total_episodes(TPE) == 300


def test_table_gives_fractions_of_the_random_sweep_and_marks_misses():
    lines = bench.table([RANDOM, TPE, NEVER]).splitlines()
    per_seed = {ln.split()[0]: ln.split() for ln in lines[2:5]}
    # strategy seed best episodes to-target x-random wall to-target x-random
    assert per_seed["tpe+asha"][3:6] == ["300", "200", "0.50"]  # 200 of random's 400 episodes
    assert per_seed["tpe+asha"][7:9] == ["2", "0.02"]  # 2 s of random's 100 s
    assert per_seed["random+asha"][4:6] == [">200", ">0.50"]  # never reached: all it spent
    summary = {ln.split()[0]: ln.split() for ln in lines[-3:]}
    assert summary["tpe+asha"][1:3] == ["1/1", "0.50"]
    assert summary["random+asha"][1] == "0/1"
    assert summary["random+fifo"][2] == "1.00"
