"""The sweep at scale: the scale benchmark runs end to end (benchmarks/bench_scale.py
--smoke-test), and the driver's per-trial work that it measured stays per trial: one
storage read per trial in the searcher, every run of a sweep read in pages."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def searcher(tmp_path):
    import optuna

    from tune.search import SweepSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return SweepSearch({"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="objective", mode="min",
                       study_name="scale", storage=storage, max_t=8)


def count_reads(search, trial_id: str) -> list[int]:
    """Count the storage reads of one trial's state (the real storage answers them)."""
    storage = search._ot_trials[trial_id].storage
    reads, inner = [], storage.get_trial

    def get_trial(number):
        reads.append(number)
        return inner(number)

    storage.get_trial = get_trial
    return reads


def test_searcher_reads_a_trials_stored_state_once_not_at_every_result(tmp_path):
    search = searcher(tmp_path)
    assert search.suggest("t1") is not None
    reads = count_reads(search, "t1")
    for step in range(1, 6):
        search.on_trial_result("t1", {"objective": 1.0 / step, "episodes": step, "training_iteration": step})
    assert len(reads) == 1
    search.on_trial_complete("t1", {"objective": 0.2, "episodes": 8, "training_iteration": 6})
    assert search._ot_study.trials[0].state.name == "COMPLETE"
    del search._ot_trials["t1"].storage.get_trial  # the counter, before pickling
    # A restored searcher (a resumed driver) reads the state again: another driver may
    # have told the study since the snapshot, and it is told nothing twice.
    path = tmp_path / "searcher.pkl"
    search._completed_trials.discard("t1")
    search.save(str(path))
    again = searcher(tmp_path)
    again.restore(str(path))
    assert again._read_unfinished == set() and pickle.loads(pickle.dumps(again))._read_unfinished == set()
    assert again.told_already("t1")


def test_summary_reads_every_run_of_a_sweep_in_pages(tmp_path):
    from mlflow.tracking import MlflowClient

    from tune.summary import sweep_runs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.create_experiment("scale")
    made = {client.create_run(exp, tags={"sweep": "s"}).info.run_id for _ in range(5)}
    client.create_run(exp, tags={"sweep": "other"})
    assert {r.info.run_id for r in sweep_runs(client, exp, "s", page=2)} == made


@pytest.mark.slow
def test_scale_benchmark_smoke_test_prints_its_table():
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "OPTUNA_STORAGE")}
    proc = subprocess.run([sys.executable, "benchmarks/bench_scale.py", "--smoke-test"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = proc.stdout.strip().splitlines()
    row = json.loads(lines[-3])
    assert row["trials"] == row["ok"] == 8
    assert row["driver_cpu_s"] > 0 and row["peak_rss_mb"] > row["rss_before_mb"] > 0
    # Writes were counted: Optuna's (SQL from the driver) and MLflow's (the server's log).
    assert row["optuna_writes"] >= 8 and row["mlflow_by_kind"].get("POST runs/create", 0) >= 9
    # The driver finds each trial's run by the id it reported, not by searching the
    # experiment: the searches left are each trial's own (at its start) and the summary's.
    # (Before: 25 for 8 trials, the driver searching twice per trial.)
    assert row["mlflow_by_kind"].get("POST runs/search", 0) <= 8 + 1, row["mlflow_by_kind"]
    assert lines[-2].split()[:2] == ["trials", "ok"] and lines[-1].split()[:2] == ["8", "8"]
