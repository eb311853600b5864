"""The Python API for sweeps (tune/api.py), as a notebook uses it: one call with a space
given as a dict, then the best trial, the table of trials and the command that trains the
best again, each checked against the stores themselves (Optuna's study, MLflow's runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

pytest.importorskip("ray", reason="the sweep extra is not installed (pip install -e '.[sweep]')")

SCRIPT = textwrap.dedent("""
    import json, sys
    from tune.api import sweep

    work = sys.argv[1]
    result = sweep("patterns", space={"eta": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                                      "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
                   num_samples=3, max_episodes=256, eval_every=128, max_concurrent=2, name="api",
                   tracking_uri=f"sqlite:///{work}/mlruns.db", storage=f"sqlite:///{work}/optuna.db",
                   storage_path=f"{work}/results")
    table = result.trials_dataframe()
    best = result.best
    print("RESULT " + json.dumps({
        "best": {"label": best.label, "score": best.score, "params": best.params, "run_id": best.run_id,
                 "checkpoint": str(best.checkpoint), "eta": best.config["eta"]},
        "labels": list(table["label"]), "scores": list(table["score"]), "columns": list(table.columns),
        "command": result.train_command, "summary": result.summary()}))
""")


@pytest.mark.slow
def test_one_call_runs_a_sweep_and_returns_the_best_and_every_trial(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "OPTUNA_STORAGE")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    got = json.loads(line.removeprefix("RESULT "))

    import optuna
    from mlflow.tracking import MlflowClient

    study = optuna.load_study(study_name="api", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert got["best"]["score"] == pytest.approx(study.best_value)
    assert got["best"]["label"] == f"t{study.best_trial.number:03d}"
    assert got["best"]["params"]["eta"] == pytest.approx(study.best_trial.params["eta"])
    assert got["best"]["eta"] == pytest.approx(study.best_trial.params["eta"])  # its config.json
    assert os.path.isfile(got["best"]["checkpoint"])
    run = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db").get_run(got["best"]["run_id"])
    assert run.data.tags["sweep"] == "api" and run.data.params["task"] == "patterns"
    # Every trial, best first, with Optuna's column names for the drawn values.
    assert len(got["labels"]) == 3 and got["scores"] == sorted(got["scores"])
    assert {"label", "score", "state", "run_id", "checkpoint", "params_eta", "params_lr"} <= set(got["columns"])
    assert got["command"].startswith("plasticity train patterns --preset small") and "--eta " in got["command"]
    assert got["command"] in got["summary"]


def test_an_unknown_setting_is_one_line():
    from plasticity.errors import ConfigError
    from tune.api import sweep

    with pytest.raises(ConfigError, match=r"^unknown sweep setting\(s\) nosuch: the settings are the fields of "):
        sweep("patterns", nosuch=1)
