"""A plugin's task through the sweep service, with nothing in the project edited: the
example plugin (examples/recall-plugin), not installed, in the folder the user runs
`python -m plasticity.cli sweep --plugin ...` from. The trials (Ray workers) load it from
the driver's plugin list, draw its own rule from its own search space, log to MLflow, and
the best trial's model is registered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.test_plugins import EXAMPLE, MODULE

pytest.importorskip("ray", reason="the sweep extra is not installed (pip install -e '.[sweep]')")
pytestmark = pytest.mark.slow


def test_a_plugin_task_sweeps_logs_and_registers_its_model(tmp_path):
    work = tmp_path / "mine"
    shutil.copytree(EXAMPLE / "plasticity_recall", work / "plasticity_recall")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PLASTICITY_PLUGINS", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "plasticity.cli", "sweep", "--plugin", MODULE, "--task", "recall", "--num-samples",
         "2", "--max-episodes", "256", "--eval-every", "128", "--max-concurrent", "2", "--name", "rs",
         "--tracking-uri", uri, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--storage-path",
         str(tmp_path / "results")],
        cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sweep rs: 2/2 trials finished without error" in proc.stdout, proc.stdout[-3000:]
    # The task's own metric beside the objective.
    assert "eval/bit_error (at best)" in proc.stdout, proc.stdout

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("plasticity-sweeps")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 2, [r.data.tags for r in runs]
    for child in children:
        assert child.data.params["task"] == "recall"
        assert child.data.params["rule"] in ("hebb", "oja", "instar")  # the plugin's space
        assert "eval/bit_error" in child.data.metrics
    versions = client.search_model_versions("name='plasticity-recall'")
    assert len(versions) == 1, versions
