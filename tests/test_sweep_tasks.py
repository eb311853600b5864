"""The image and Omniglot tasks in the sweep service: a real local Ray + Optuna sweep
each, with their built-in spaces, data from the shared folder and results in MLflow."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA
from tests.test_sweep import _mlflow, one_error_line, sweep


@pytest.mark.slow
@pytest.mark.parametrize("task,fixed,metric_key", [
    ("images", ["image_size=8", "num_cycles=1", "present_steps=2", "gap_steps=1"], "eval/erased_loss"),
    ("omniglot", ["channels=16"], "eval/accuracy"),
], ids=["images", "omniglot"])
def test_task_sweep(tmp_path, task, fixed, metric_key):
    proc = sweep(["--task", task, "--num-samples", "2", "--max-episodes", "256", "--eval-every", "128",
                  "--max-concurrent", "2", "--name", task, "--fixed", *fixed], tmp_path,
                 env={"PLASTICITY_DATA": str(SHARED_DATA), "PLASTICITY_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2/2 trials finished without error" in proc.stdout
    client = _mlflow(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("plasticity-sweeps")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for child in children:
        assert child.data.params["task"] == task and child.data.params["data_dir"] == str(SHARED_DATA.resolve())
        assert {"rule", "eta", "lr"} <= set(child.data.params)
        assert client.get_metric_history(child.info.run_id, metric_key)


def test_fixed_values_are_checked_before_any_trial(tmp_path):
    proc = sweep(["--task", "images", "--fixed", "image_size=12"], tmp_path, timeout=120)
    assert "image_size must be 32, 16 or 8" in one_error_line(proc)
    proc = sweep(["--task", "images", "--fixed", "nonsense"], tmp_path, timeout=120)
    assert "--fixed takes KEY=VALUE" in one_error_line(proc)
    # Trials run the fused path unless --fixed impl=plain selects the reference.
    proc = sweep(["--task", "patterns", "--fixed", "impl=fast"], tmp_path, timeout=120)
    assert "unknown implementation 'fast': choose one of fused, plain" in one_error_line(proc)
