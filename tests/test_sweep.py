"""The sweep service with the real parts: a local Ray, Optuna on SQLite/PostgreSQL,
MLflow on SQLite or a real `mlflow server`, and `ray job submit` with token auth."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.servers import free_port, start_mlflow_server, stop

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--task", "patterns", "--num-samples", "3", "--max-episodes", "512", "--eval-every", "128",
         "--max-concurrent", "2"]


def sweep(args, cwd, env=None, timeout=900):
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full_env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run([sys.executable, "-m", "tune.sweep", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("plasticity sweep: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[-1]


@pytest.mark.parametrize("args,message", [
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot use MLflow tracking store http://127.0.0.1:9"),
    (["--storage", "postgresql://nobody@127.0.0.1:9/none"], "cannot reach the PostgreSQL server at 127.0.0.1:9"),
    (["--storage", "notaurl"], "cannot open Optuna storage notaurl"),
    (["--space", "missing.yaml"], "search space file missing.yaml not found"),
    (["--preset", "huge"], "unknown patterns preset 'huge'"),
    (["--num-samples", "0"], "num_samples must be > 0"),
    (["--address", "127.0.0.1:1"], "cannot connect to Ray at 127.0.0.1:1"),
], ids=["tracking", "storage-pg", "storage-url", "space", "preset", "samples", "ray-address"])
def test_bad_input_fails_before_any_trial(tmp_path, args, message):
    proc = sweep([*SMOKE, *args], tmp_path, timeout=300)
    assert message in one_error_line(proc)
    assert not (tmp_path / "ray_results").exists()


def test_space_outside_the_configs_limits_fails_before_any_trial(tmp_path):
    (tmp_path / "space.yaml").write_text("eta: {type: float, low: 0.01, high: 1.5, log: true}\n")
    proc = sweep([*SMOKE, "--space", "space.yaml"], tmp_path, timeout=300)
    line = one_error_line(proc)
    assert "search space parameter 'eta' can draw 1.5 (high)" in line and "eta must be in (0, 1]" in line
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.slow
def test_sweep_in_which_every_trial_fails_exits_non_zero_with_the_first_error(tmp_path):
    # An input gain of 1e39 overflows float32: every trial's loss is NaN.
    (tmp_path / "space.yaml").write_text("input_gain: {type: categorical, choices: [1.0e+39]}\n")
    proc = sweep(["--task", "patterns", "--num-samples", "2", "--max-episodes", "256", "--eval-every", "64",
                  "--space", "space.yaml", "--scheduler", "fifo", "--max-failures", "0", "--name", "allfail",
                  "--no-tracking"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("plasticity sweep: error: all 2 trials failed; the first: "), last
    assert "loss became nan" in last or "loss became inf" in last, last


def _mlflow(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def check_sweep_in_mlflow(uri: str, experiment: str, trials: int, model_name: str):
    client = _mlflow(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == trials, [r.data.tags for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status in ("FINISHED", "FAILED")
        params = child.data.params
        assert {"eta", "rule", "alpha_mode", "eta_mode", "extra_neurons", "lr"} <= set(params)
        assert params["impl"] == "fused"  # trials run the fast path by default
        history = client.get_metric_history(child.info.run_id, "eval/loss")
        assert history and history[0].step > 0
        if child.info.status == "FINISHED":  # the score the runs table sorts by
            assert child.data.metrics["objective"] == min(m.value for m in history)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/trials.csv", "summary/trials.md", "summary/objective_vs_eta_by_rule.png"} <= arts
    # The answer where the printed URL lands: the run's description, Optuna's figures on top.
    figures = {a.path for a in client.list_artifacts(parent.info.run_id) if not a.is_dir}
    assert {"optimization_history.png", "objective_vs_eta.png", "objective_vs_rule.png"} <= figures, figures
    note = parent.data.tags["mlflow.note.content"]
    assert "plasticity train " in note
    assert f"get-artifact?path=objective_vs_eta.png&run_uuid={parent.info.run_id}" in note
    assert note.count("| t0") == 0 and note.count("\n  t0") >= 1, note  # the printed table, in a code block
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert len(versions) >= 1
    assert parent.data.tags["best_model"].startswith(f"{model_name}/")
    return parent, children


@pytest.mark.slow
def test_local_sweep_on_embedded_defaults(tmp_path):
    proc = sweep([*SMOKE, "--name", "local"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "3/3 trials finished without error" in proc.stdout
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    check_sweep_in_mlflow(uri, "plasticity-sweeps", 3, "plasticity-patterns")
    # The registered model's pyfunc answers whole episodes (plasticity/serving/mlflow_pyfunc.py).
    import mlflow

    mlflow.set_tracking_uri(uri)
    best = mlflow.pyfunc.load_model("models:/plasticity-patterns/1")
    assert best.loader_module == "plasticity.serving.mlflow_pyfunc"
    example = best.input_example
    assert best.predict(example).shape == (1, example.shape[-1])
    import optuna

    study = optuna.load_study(study_name="local", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 3
    assert all("eta" in t.params for t in study.trials)


@pytest.mark.slow
def test_diverging_trial_is_failed_with_reason_and_the_sweep_goes_on(tmp_path):
    space = tmp_path / "space.yaml"
    # input gain 20 or 1e39: the latter overflows float32 (a real NaN); seed 7 draws each twice.
    space.write_text("input_gain: {type: categorical, choices: [20.0, 1.0e+39]}\n")
    proc = sweep(["--task", "patterns", "--num-samples", "4", "--max-episodes", "256", "--eval-every", "64",
                  "--space", str(space), "--search", "random", "--scheduler", "fifo", "--max-failures", "0",
                  "--name", "nan", "--seed", "7"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = _mlflow(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("plasticity-sweeps")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    by_lr = {}
    for r in children:
        by_lr.setdefault(r.data.params["input_gain"], []).append(r.info.status)
    assert set(by_lr.get("1e+39", [])) == {"FAILED"} and set(by_lr.get("20.0", [])) == {"FINISHED"}, by_lr
    assert "loss became nan" in proc.stderr or "loss became inf" in proc.stderr


@pytest.fixture
def postgres_dbs():
    """Two fresh databases on the local PostgreSQL (MLflow and Optuna), dropped after."""
    import psycopg

    names = [f"plasticity_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")]
    conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True)
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE {name}")
    yield [f"postgresql://postgres@127.0.0.1:5432/{name}" for name in names]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


@pytest.mark.slow
def test_sweep_with_postgres_for_mlflow_and_optuna(tmp_path, postgres_dbs):
    mlflow_db, optuna_db = postgres_dbs
    server, uri = start_mlflow_server(tmp_path, mlflow_db)
    try:
        proc = sweep([*SMOKE, "--name", "pg", "--tracking-uri", uri, "--storage", optuna_db,
                      "--register-model", "pg-best"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        check_sweep_in_mlflow(uri, "plasticity-sweeps", 3, "pg-best")
        import optuna

        assert len(optuna.load_study(study_name="pg", storage=optuna_db).trials) == 3
        assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "optuna.db").exists()
    finally:
        stop(server)


@pytest.mark.slow
def test_ray_job_submit_with_token_auth_end_to_end(tmp_path):
    """`ray start --head` with token auth, `ray job submit` of a sweep, results checked
    in a real MLflow server; the job API refuses requests without the token."""
    server, uri = start_mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}")
    dash = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    try:
        subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(dash), "--port", str(free_port()), "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        address = f"http://127.0.0.1:{dash}"
        # Without the token the job API answers "Authentication required".
        no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        no_token["HOME"] = str(tmp_path / "elsewhere")
        refused = subprocess.run([ray_bin, "job", "list", "--address", address], env=no_token,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "uthentication" in (refused.stdout + refused.stderr)
        job = subprocess.run(
            [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO),
             "--runtime-env-json", '{"excludes": [".venv", ".git", "runs", "ray_results"]}', "--",
             "python", "-m", "tune.sweep", *SMOKE, "--name", "job", "--tracking-uri", uri,
             "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--storage-path", str(tmp_path / "ray_results")],
            env=env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        assert "3/3 trials finished without error" in job.stdout
        check_sweep_in_mlflow(uri, "plasticity-sweeps", 3, "plasticity-patterns")
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        stop(server)
