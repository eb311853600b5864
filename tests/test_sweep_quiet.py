"""The sweep's terminal with a real `mlflow server`: as short as with the SQLite store
(MLflow's `View run ... at: URL` links go to the sweep's log file), and MLflow's usage
telemetry off in the driver and in every trial unless the user says otherwise."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import start_mlflow_server, stop

REPO = Path(__file__).resolve().parents[1]
# MLflow treats these as "CI or a test": telemetry off whatever we do. Leave them out so
# that what is checked here is the project's own switch.
CI_MARKERS = ("PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE",
              "JENKINS_URL", "TRAVIS", "CIRCLECI", "TF_BUILD", "TEAMCITY_VERSION", "CODEBUILD_BUILD_ARN",
              "BITBUCKET_BUILD_NUMBER", "CLOUD_RUN_EXECUTION")
MLFLOW_SWITCHES = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
                   "MLFLOW_TRACKING_URI", "RAY_ADDRESS")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CI_MARKERS + MLFLOW_SWITCHES}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **extra})
    return env


def telemetry_in_a_fresh_process(**extra: str) -> str:
    code = "import tune.trainable as t; print(t.telemetry_state())"
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(**extra), cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_telemetry_is_off_where_tune_is_imported_unless_the_user_turns_it_on():
    assert telemetry_in_a_fresh_process() == "off"
    # The user's own setting wins (either MLflow's variable or the DO_NOT_TRACK convention).
    assert telemetry_in_a_fresh_process(MLFLOW_DISABLE_TELEMETRY="false") == "on"
    assert telemetry_in_a_fresh_process(DO_NOT_TRACK="false") == "on"


@pytest.mark.slow
def test_sweep_with_a_tracking_server_keeps_run_links_off_the_terminal(tmp_path):
    server, uri = start_mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}")
    try:
        # The control: against this server MLflow does print a link for each run it ends.
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("control"))
        said = io.StringIO()
        with contextlib.redirect_stdout(said):
            client.set_terminated(run.info.run_id)
        assert "View run" in said.getvalue()

        proc = subprocess.run(
            [sys.executable, "-m", "tune.sweep", "--task", "patterns", "--num-samples", "2", "--max-episodes", "64",
             "--eval-every", "32", "--scheduler", "fifo", "--max-concurrent", "2", "--cpus-per-trial", "0.5",
             "--name", "quiet", "--tracking-uri", uri, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}",
             "--fixed", "eval_episodes=32"],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=900)
        terminal = proc.stdout + proc.stderr
        assert proc.returncode == 0, terminal[-4000:]
        assert "2/2 trials finished without error" in proc.stdout
        assert "View run" not in terminal and "View experiment" not in terminal, terminal
        # The server's address appears once: the summary's link to the parent run.
        assert sum(uri in line for line in terminal.splitlines()) == 1, terminal
        log = (tmp_path / "ray_results" / "quiet" / "sweep-quiet.log").read_text()
        links = [ln for ln in log.splitlines() if "View run" in ln]
        assert len(links) == 2 and all(f"at: {uri}/#/experiments/" in ln for ln in links), links
        # Every trial ran with MLflow's telemetry off (no client in its process).
        placements = sorted((tmp_path / "ray_results" / "quiet").glob("*/placement.json"))
        assert len(placements) == 2
        assert all(json.loads(p.read_text())["mlflow_telemetry"] == "off" for p in placements)
    finally:
        stop(server)
