"""Sweep fault tolerance with the real parts: a killed driver resumes with
`Tuner.restore` without rerunning finished trials; multi-objective search runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_sweep import REPO, sweep


def _terminated(results: Path) -> set[str]:
    """Trial ids that Tune's saved experiment state (what `Tuner.restore` reads) marks finished."""
    done = set()
    for state in results.glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (ValueError, KeyError, OSError):
            continue  # being rewritten right now
        for trial_json, _ in trials:
            trial = json.loads(trial_json)
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def _result_mtimes(results: Path) -> dict[str, float]:
    return {p.parent.name.split("_")[2]: p.stat().st_mtime for p in results.glob("*/result.json")}


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    args = ["--task", "patterns", "--num-samples", "4", "--max-episodes", "256", "--eval-every", "128",
            "--scheduler", "fifo", "--max-concurrent", "1", "--name", "crash", "--no-tracking"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Tune saves its experiment state at most every 10 s by default ("auto"), so on a fast
    # machine all four short trials could finish between two saves and the kill would find
    # nothing left to resume. Saving at every step of the driver's loop makes what the test
    # reads (and what the kill leaves) the driver's state at the moment of the kill.
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", TUNE_GLOBAL_CHECKPOINT_S="0")
    driver = subprocess.Popen([sys.executable, "-m", "tune.sweep", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = tmp_path / "ray_results" / "crash"
    deadline = time.time() + 300
    while time.time() < deadline and len(_terminated(results)) < 2:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    done_before = _terminated(results)
    assert 2 <= len(done_before) < 4, done_before
    stamps = {k: v for k, v in _result_mtimes(results).items() if k in done_before}

    proc = sweep([*args, "--resume"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "4/4 trials finished without error" in proc.stdout
    # The trials that had finished were restored, not run again.
    after = _result_mtimes(results)
    assert {k: after[k] for k in stamps} == stamps
    assert len(_terminated(results)) == 4 and len(after) == 4


@pytest.mark.slow
def test_multi_objective_sweep(tmp_path):
    proc = sweep(["--task", "patterns", "--num-samples", "3", "--max-episodes", "256", "--eval-every", "128",
                  "--multi-objective", "--name", "mo", "--no-tracking"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import optuna

    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 for t in complete)


def _worker_pids() -> list[int]:
    """Processes running a Tune function trial (Ray names them ray::ImplicitFunc...)."""
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_killed_trial_is_retried_from_its_checkpoint(tmp_path):
    """SIGKILL the process running a trial: Ray restarts it (FailureConfig) from its last
    checkpoint, so training continues from the saved episode instead of from zero."""
    args = ["--task", "patterns", "--num-samples", "1", "--max-episodes", "24576", "--eval-every", "512",
            "--scheduler", "fifo", "--name", "retry", "--no-tracking", "--max-failures", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    driver = subprocess.Popen([sys.executable, "-m", "tune.sweep", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        results = tmp_path / "ray_results" / "retry"
        deadline = time.time() + 300
        while time.time() < deadline and not any(
                '"episodes": 2048' in p.read_text() for p in results.glob("*/result.json")):
            time.sleep(0.2)
        pids = _worker_pids()
        assert pids, "no trial process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, stderr[-4000:]
    assert "1/1 trials finished without error" in stdout
    (result,) = results.glob("*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    episodes = [r["episodes"] for r in rows]
    # Reported up to the kill, then resumed from the last checkpoint: a restart happened
    # (iterations_since_restore back to 1) and it did not start again from episode 0.
    assert episodes[-1] == 24576
    restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1 and i > 0]
    assert restarts and episodes[restarts[0]] > 512, episodes
    assert episodes.count(512) == 1, episodes
