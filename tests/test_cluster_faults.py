"""The cluster of docker-compose.yml, started by the local launcher (`cluster.local`):
MLflow with basic auth on the local PostgreSQL, a Ray head with token auth and a second
Ray node. Sweeps are submitted with `ray job submit`; faults are injected mid-sweep and
every trial and every metric is accounted for:

- a worker node SIGKILLed: its trial is retried from its checkpoint, nothing is lost;
- the MLflow server restarted: no metric lost, no trial failed;
- the sweep driver SIGKILLed and resumed: finished trials are not run again;
- requests without the Ray token or MLflow credentials are refused; a checkpoint never
  unpickles arbitrary objects.

Each sweep is tiny (small preset, a few trials of ~1500 episodes); one cluster serves
the whole module. Set PLASTICITY_FAULT_REPORT=FILE to get the fault table's numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cluster.local import Cluster
from cluster.processes import free_port
from tests.test_plugins import EXAMPLE, MODULE
from tests.test_sweep import check_sweep_in_mlflow
from tests.test_sweep_faults import _terminated

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
EXCLUDES = json.dumps({"excludes": [".venv", ".git", "runs", "ray_results", ".cluster", "mlruns*", "*.db"]})
# Two trials at a time: one on the head's CPU, one on the worker's.
SWEEP = ["--task", "patterns", "--max-concurrent", "2", "--cpus-per-trial", "1", "--scheduler", "fifo"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    dbs = {key: f"plc_{key.split('_')[0].lower()}_{suffix}" for key in ("MLFLOW_DB", "MLFLOW_AUTH_DB", "OPTUNA_DB")}
    env = {**os.environ, **dbs, "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "unused-trust-auth",
           "POSTGRES_DB": "test", "MLFLOW_ADMIN_PASSWORD": f"admin-{uuid.uuid4().hex}",
           "MLFLOW_SECRET_KEY": uuid.uuid4().hex, "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2,
           "MLFLOW_PORT": str(free_port()), "RAY_GCS_PORT": str(free_port()),
           "RAY_DASHBOARD_PORT": str(free_port()), "RAY_CLIENT_PORT": str(free_port()),
           "RAY_HEAD_CPUS": "1", "RAY_WORKER_CPUS": "1", "RAY_WORKERS": "1", "MLFLOW_WORKERS": "1"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "OPTUNA_STORAGE", "PLASTICITY_STORAGE_PATH", "RAY_AUTH_MODE"):
        env.pop(key, None)
    state = tmp_path_factory.mktemp("cluster")
    cl = Cluster.from_env(state / "state", env_file=state / "no.env", environ=env)
    try:
        cl.up()
        yield cl
    finally:
        cl.down()
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as conn:
            for name in dbs.values():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def client_env(cluster, monkeypatch):
    """This process as a client of the cluster (MLflow credentials, Ray token)."""
    env = cluster.client_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def submit(env: dict[str, str], args: list[str], wait: bool = True, runtime_env: dict | None = None):
    cmd = [RAY, "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({**json.loads(EXCLUDES), **(runtime_env or {})}), "--", "python", "-m",
           "tune.sweep", *args]
    full = {**os.environ, **env}
    if wait:
        return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def rows(results: Path) -> dict[str, list[dict]]:
    """trial_id -> the rows Tune recorded (result.json), in order."""
    out = {}
    for path in results.glob("*/result.json"):
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                break  # being written
        if parsed:
            out[parsed[0]["trial_id"]] = parsed
    return out


def wait_rows(results: Path, trials: int, each: int, below: int | None = None, timeout: float = 300) -> None:
    """Until `trials` trials have at least `each` results (and, with `below`, fewer than
    `below`: still running, not near their end)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = [len(r) for r in rows(results).values()]
        if sum(each <= n < (below or n + 1) for n in got) >= trials:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{trials} trials with {each} results each not reached: {got}")


def mlflow_client():
    """A client of the cluster's MLflow (named explicitly: an earlier test in this process
    may have called mlflow.set_tracking_uri, which wins over $MLFLOW_TRACKING_URI)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def child_runs(sweep: str) -> dict[str, object]:
    client = mlflow_client()
    exp = client.get_experiment_by_name("plasticity-sweeps")
    runs = client.search_runs([exp.experiment_id], f"tags.sweep = '{sweep}'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    by_trial = {}
    for run in children:
        assert run.data.tags["trial_id"] not in by_trial, "two MLflow runs for one trial"
        by_trial[run.data.tags["trial_id"]] = run
    return by_trial


def metrics_lost(run, trial_rows: list[dict]) -> int:
    """(metric, step) pairs Tune recorded that the trial's MLflow run does not have."""
    client = mlflow_client()
    lost = 0
    keys = {k for r in trial_rows for k, v in r.items() if "/" in k and isinstance(v, int | float)}
    for key in keys:
        logged = {m.step for m in client.get_metric_history(run.info.run_id, key)}
        lost += sum(1 for r in trial_rows if key in r and r["episodes"] not in logged)
    return lost


def counts(output: str, name: str) -> dict[str, int]:
    line = next(ln for ln in output.splitlines() if ln.startswith(f"sweep {name}: trials started"))
    parts = line.split(": trials ", 1)[1].split(", ")
    return {p.split()[0]: int(p.split()[1]) for p in parts}


def record(fault: str, **numbers) -> None:
    print(f"FAULT {fault}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))
    if os.environ.get("PLASTICITY_FAULT_REPORT"):
        with open(os.environ["PLASTICITY_FAULT_REPORT"], "a") as f:
            f.write(json.dumps({"fault": fault, **numbers}) + "\n")


@pytest.mark.slow
def test_ray_job_submit_sweep_on_the_two_node_cluster(cluster, client_env):
    """The deployment end to end: `ray job submit` of a sweep, trials on both nodes,
    runs in MLflow (basic auth), the study in PostgreSQL."""
    proc = submit(client_env, [*SWEEP, "--num-samples", "3", "--max-episodes", "512", "--eval-every", "128",
                               "--name", "job"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "3/3 trials finished without error" in out
    assert counts(out, "job") == {"started": 3, "finished": 3, "retried": 0, "retries": 0, "failed": 0, "lost": 0}
    parent, children = check_sweep_in_mlflow(client_env["MLFLOW_TRACKING_URI"], "plasticity-sweeps", 3,
                                             "plasticity-patterns")
    assert len({c.data.tags["ray_node_id"] for c in children}) == 2, "the trials did not use both nodes"
    import optuna

    study = optuna.load_study(study_name="job", storage=client_env["OPTUNA_STORAGE"])
    assert len(study.trials) == 3


@pytest.mark.slow
def test_ray_job_submit_of_a_plugin_sweep_then_its_model_served_over_http(cluster, client_env, tmp_path):
    """The example plugin (examples/recall-plugin), not installed anywhere: shipped with the
    job by Ray's runtime env (`py_modules`), swept on both nodes with its own rule in its own
    space, its best model registered in MLflow; then `plasticity serve models:/...` with the
    plugin answers live sessions over HTTP exactly as the registered checkpoint does in
    process."""
    proc = submit(client_env, ["--plugin", MODULE, *SWEEP[2:], "--task", "recall", "--num-samples", "4",
                               "--max-episodes", "256", "--eval-every", "128", "--name", "recalljob"],
                  runtime_env={"py_modules": [str(EXAMPLE / "plasticity_recall")]})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "4/4 trials finished without error" in out, out[-3000:]
    runs = child_runs("recalljob")
    assert len(runs) == 4 and {r.data.params["task"] for r in runs.values()} == {"recall"}
    assert {r.data.params["rule"] for r in runs.values()} <= {"hebb", "oja", "instar"}
    assert len({r.data.tags["ray_node_id"] for r in runs.values()}) == 2, "the trials did not use both nodes"
    assert len(mlflow_client().search_model_versions("name = 'plasticity-recall'")) == 1

    from tests.test_serving_http import TOKEN, http, wait_http

    port, ray_tmp = free_port(), tempfile.mkdtemp(prefix="pls", dir="/tmp")
    env = {**os.environ, **client_env, "PYTHONPATH": str(EXAMPLE), "RAY_TMPDIR": ray_tmp,
           "PLASTICITY_SERVE_TOKEN": TOKEN}
    env.pop("RAY_ADDRESS")  # serve starts a Ray of its own
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "plasticity.cli", "serve", "--plugin", MODULE,
                               "models:/plasticity-recall/1", "--port", str(port), "--num-cpus", "1", "--shard-cpus",
                               "0.5", "--threads", "1"], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/info", server, log)
        status, info = http("GET", f"{url}/info")
        assert status == 200 and info["num_items"] == 3 and info["item_size"] == 16, info
        rng = np.random.default_rng(5)
        pairs = np.sign(rng.standard_normal((3, 16)))
        query = np.concatenate([pairs[1, :8], np.zeros(8)])
        steps = []
        for pair in pairs:
            steps += [pair] * info["present_steps"] + [np.zeros(16)] * info["gap_steps"]
        steps += [query] * info["test_steps"]
        status, session = http("POST", f"{url}/sessions")
        assert status == 201, session
        for x in steps:
            status, answer = http("POST", f"{url}/sessions/{session['id']}/step", {"input": x.tolist()})
            assert status == 200, answer
        assert answer["steps"] == len(steps)
        assert http("POST", f"{url}/sessions/{session['id']}/step", {"input": [1.0] * 3})[0] == 400
    finally:
        from tests.servers import stop

        stop(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    # The same episode in process, from the registered model's checkpoint.
    code = ("import json, sys, numpy as np\n"
            "from plasticity.serving import ServedModel\n"
            "from plasticity.serving.mlflow_pyfunc import checkpoint_of\n"
            "served = ServedModel.from_checkpoint(checkpoint_of('models:/plasticity-recall/1'))\n"
            "episode = np.array(json.loads(sys.stdin.read()))\n"
            "print(json.dumps(served.run_episodes(episode).tolist()))\n")
    episode = np.concatenate([pairs, query[None]])[None]
    local = subprocess.run([sys.executable, "-c", code], input=json.dumps(episode.tolist()), capture_output=True,
                           text=True, timeout=300, env={**env, "PLASTICITY_PLUGINS": MODULE})
    assert local.returncode == 0, local.stderr[-3000:]
    expected = np.array(json.loads(local.stdout.strip().splitlines()[-1]))[0]
    assert np.abs(np.array(answer["output"]) - expected).max() < 1e-4, (answer["output"], expected)


@pytest.mark.slow
def test_worker_node_killed_mid_sweep_loses_no_trial(cluster, client_env):
    name = "nodekill"
    results = Path(client_env["PLASTICITY_STORAGE_PATH"]) / name
    # 48 reports per trial, and the kill only while both running trials (one per node:
    # each node has one CPU) are between their 3rd and 36th report, so it lands in the
    # middle of the worker's trial however fast training runs (at 24 reports and no
    # upper bound, a faster machine finished the worker's trial before the kill).
    episodes, every = 12288, 256
    job = submit(client_env, [*SWEEP, "--num-samples", "3", "--max-episodes", str(episodes), "--eval-every",
                              str(every), "--name", name], wait=False)
    try:
        wait_rows(results, trials=2, each=3, below=36)
        cluster.stop("ray-worker-1", kill=True)  # the whole node: raylet, agents and its trial
        out, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        cluster.start("ray-worker-1")
    assert job.returncode == 0, out[-4000:]
    c = counts(out, name)
    assert c["started"] == c["finished"] == 3 and c["failed"] == 0 and c["lost"] == 0, c
    assert c["retried"] >= 1, c
    tune_rows = rows(results)
    runs = child_runs(name)
    assert set(runs) == set(tune_rows)  # one MLflow run per trial, for every trial
    lost = 0
    for trial_id, trial_rows in tune_rows.items():
        run = runs[trial_id]
        assert run.info.status == "FINISHED" and trial_rows[-1]["episodes"] == episodes
        restarts = [i for i, r in enumerate(trial_rows) if r["iterations_since_restore"] == 1 and i > 0]
        if restarts:
            # Retried from its last checkpoint, not from episode 0.
            assert trial_rows[restarts[0]]["episodes"] > every and int(run.data.tags.get("retries", 0)) >= 1
        lost += metrics_lost(run, trial_rows)
    assert lost == 0
    record("worker node SIGKILLed", started=c["started"], finished=c["finished"], retried=c["retried"],
           lost=c["lost"], metrics_lost=lost)


@pytest.mark.slow
def test_mlflow_restart_mid_sweep_loses_no_metric(cluster, client_env):
    name = "mlflowrestart"
    results = Path(client_env["PLASTICITY_STORAGE_PATH"]) / name
    job = submit(client_env, [*SWEEP, "--num-samples", "2", "--max-episodes", "4608", "--eval-every", "128",
                              "--name", name], wait=False)
    try:
        wait_rows(results, trials=2, each=2)
        cluster.stop("mlflow")
        down_at = time.time()
        time.sleep(3)
        cluster.start("mlflow")
        outage = time.time() - down_at
        reported_during = sum(len(r) for r in rows(results).values())
        out, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, out[-4000:]
    c = counts(out, name)
    assert c == {"started": 2, "finished": 2, "retried": 0, "retries": 0, "failed": 0, "lost": 0}, c
    tune_rows = rows(results)
    runs = child_runs(name)
    assert set(runs) == set(tune_rows)
    lost = sum(metrics_lost(runs[t], r) for t, r in tune_rows.items())
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert lost == 0 and reported_during < sum(len(r) for r in tune_rows.values())
    record("MLflow server restarted", outage_s=round(outage, 1), started=c["started"], finished=c["finished"],
           retried=c["retried"], lost=c["lost"], metrics_lost=lost)


@pytest.mark.slow
def test_killed_driver_resumes_on_the_cluster_without_rerunning_finished_trials(cluster, client_env):
    name = "driverkill"
    results = Path(client_env["PLASTICITY_STORAGE_PATH"]) / name
    # 6 reports per trial: time to kill the driver after 2 trials ended and before all 4 did.
    args = [*SWEEP, "--num-samples", "4", "--max-episodes", "768", "--eval-every", "128", "--name", name]
    # Tune saves its experiment state at every driver step (as in test_sweep_faults): with its
    # default 10 s period, all four trials could end between two saves. A kill between telling
    # Optuna and that save still happens (CI saw it: the resumed driver ended a trial Optuna
    # held as COMPLETE); test_search_settings covers it deterministically.
    env = {**os.environ, **client_env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    env["RAY_ADDRESS"] = f"127.0.0.1:{cluster.plan(0)['ray-head'][1]['RAY_GCS_PORT']}"
    driver = subprocess.Popen([sys.executable, "-m", "tune.sweep", *args], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(_terminated(results)) < 2 and driver.poll() is None:
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    done_before = _terminated(results)
    assert 2 <= len(done_before) < 4, done_before
    stamps = {t: r[-1]["timestamp"] for t, r in rows(results).items() if t in done_before}

    proc = subprocess.run([sys.executable, "-m", "tune.sweep", *args, "--resume"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "4/4 trials finished without error" in proc.stdout
    after = rows(results)
    assert {t: after[t][-1]["timestamp"] for t in stamps} == stamps, "a finished trial ran again"
    c = counts(proc.stdout, name)
    assert c["failed"] == 0 and c["lost"] == 0 and c["started"] <= 4 - len(done_before), c
    runs = child_runs(name)
    assert set(runs) == set(after) and len(runs) == 4
    lost = sum(metrics_lost(runs[t], r) for t, r in after.items())
    assert lost == 0
    record("sweep driver SIGKILLed, then --resume", finished_before_kill=len(done_before),
           rerun=0, started_after_resume=c["started"], lost=c["lost"], metrics_lost=lost)


@pytest.mark.slow
def test_requests_without_credentials_are_refused(cluster, client_env, tmp_path):
    # Ray job API: no token -> refused; with the token -> answers.
    no_token = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    refused = subprocess.run([RAY, "job", "list", "--address", client_env["RAY_ADDRESS"]], env=no_token,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "uthentication" in refused.stdout + refused.stderr
    wrong = subprocess.run([RAY, "job", "list", "--address", client_env["RAY_ADDRESS"]],
                           env={**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0
    ok = subprocess.run([RAY, "job", "list", "--address", client_env["RAY_ADDRESS"]], env={**os.environ},
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    # MLflow: no credentials or a wrong password -> one line naming the fix, before any trial.
    uri = client_env["MLFLOW_TRACKING_URI"]
    for user, password in ((None, None), ("admin", "wrong-password-123")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        if user:
            env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
        proc = subprocess.run([sys.executable, "-m", "tune.sweep", "--task", "patterns", "--tracking-uri", uri,
                               "--storage", f"sqlite:///{tmp_path / 'o.db'}", "--smoke-test"], cwd=tmp_path,
                              env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == (
            f"plasticity sweep: error: MLflow at {uri}: credentials refused: set "
            "MLFLOW_TRACKING_USERNAME/PASSWORD to a user of this server")
    # The anonymous REST API is refused too (not only the Python client).
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert info.value.code == 401


class _RunsCode:
    """Unpickling this runs a shell command (what weights_only loading must refuse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoints_never_unpickle_arbitrary_objects(tmp_path):
    """The paths a cluster loads checkpoints on (a retried trial's resume, the driver's
    best-model logging) refuse a checkpoint that would run code when unpickled."""
    import torch

    from plasticity.config import CONFIGS
    from plasticity.errors import CheckpointError
    from plasticity.train import load_checkpoint, model_from_checkpoint

    marker = tmp_path / "pwned"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"format": "plasticity-checkpoint", "payload": _RunsCode(marker)}, bad)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError):
        model_from_checkpoint(bad, CONFIGS["patterns"])
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # the same file, unpickled without the guard: runs the command
    assert marker.exists()
