"""The `plasticity` command line, run as a user would (subprocesses), with MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plasticity.rules import rule_names
from tests.servers import start_mlflow_server, stop

SMALL = ["--preset", "small", "--episodes", "4000", "--eval-every", "2000", "--no-progress"]


def run(args, cwd, env=None, timeout=600):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "plasticity.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("plasticity: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_train_logs_run_to_default_sqlite_and_evaluate(tmp_path):
    proc = run(["train", "patterns", *SMALL], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "done: runs/patterns__plastic__hebb__0__" in proc.stdout
    assert (tmp_path / "mlruns.db").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("plasticity")
    (run_info,) = client.search_runs([exp.experiment_id])
    assert run_info.info.status == "FINISHED"
    params = run_info.data.params
    assert params["rule"] == "hebb" and params["preset"] == "small" and params["eta"] == "0.01"
    assert params["alpha_mode"] == "free" and params["batch_size"] == "32"
    assert run_info.data.tags["perf/backend"] in ("cpp", "torch")  # the fused kernels that ran (CPU)
    history = client.get_metric_history(run_info.info.run_id, "eval/bit_error_erased")
    assert [m.step for m in history] == [2016, 4000]
    assert history[-1].value < 0.3
    artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id, "run")}
    assert {"run/checkpoint.pt", "run/completion.png", "run/learning_curve.png", "run/metrics.jsonl"} <= artifacts
    figures = client.list_artifacts(run_info.info.run_id, "figures")
    assert len(figures) == 2
    models = client.search_logged_models([exp.experiment_id])
    assert len(models) == 1 and models[0].source_run_id == run_info.info.run_id
    assert str(models[0].status).endswith("READY"), models[0].status
    import mlflow
    import torch

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    loaded = mlflow.pytorch.load_model(models[0].model_uri)
    out, _ = loaded(torch.zeros(2, 11, 51))
    assert out.shape == (2, 11, 51)

    (ckpt,) = (tmp_path / "runs").glob("*/checkpoint.pt")
    proc = run(["evaluate", str(ckpt), "--episodes", "128"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "bit_error_erased:" in ln)
    assert float(line.split(":")[1]) < 0.3
    assert (ckpt.parent / "evaluation.png").stat().st_size > 1000


def test_resume_from_the_command_line(tmp_path):
    proc = run(["train", "patterns", "--preset", "small", "--episodes", "256", "--eval-every", "128",
                "--no-tracking", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (ckpt,) = (tmp_path / "runs").glob("*/checkpoint.pt")
    proc = run(["train", "patterns", "--preset", "small", "--episodes", "512", "--eval-every", "128",
                "--resume", str(ckpt), "--no-tracking", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = (ckpt.parent / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


@pytest.mark.parametrize("args,message", [
    (["train", "patterns", "--rule", "hebbian"],
     f"unknown plasticity rule 'hebbian': choose one of {', '.join(rule_names(modulated=False))}"),
    (["train", "patterns", "--eta", "-0.5"], "eta must be in (0, 1], got -0.5"),
    (["train", "patterns", "--preset", "huge"], "unknown patterns preset 'huge'"),
    (["train", "patterns", "--pattern-size", "0"], "pattern_size must be > 0"),
    (["train", "patterns", "--rule", "neuromod"], "rule 'neuromod' is neuromodulated and needs a network"),
    (["train", "mazes"], "unknown task 'mazes'"),
    (["train", "images", "--data-dir", "nowhere"], "no CIFAR-10 batches (data_batch_1..5, test_batch) in nowhere"),
    (["train", "omniglot", "--data-dir", "nowhere"], "no Omniglot"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["evaluate", "nowhere.pt"], "checkpoint nowhere.pt not found"),
    (["train", "patterns", "--tracking-uri", "http://127.0.0.1:9"], "cannot use MLflow tracking store http://127.0.0.1:9"),
], ids=["rule", "eta", "preset", "size", "modulated-rule", "task", "no-cifar", "no-omniglot", "command", "checkpoint",
        "tracking"])
def test_bad_input_one_line_exit_2(tmp_path, args, message):
    line = one_error_line(run(args, tmp_path, timeout=120))
    assert message in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_corrupt_checkpoint_one_line(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    line = one_error_line(run(["evaluate", str(bad)], tmp_path))
    assert "is not a readable checkpoint" in line


def test_tyro_usage_error_exits_2(tmp_path):
    proc = run(["train", "patterns", "--episodes", "many"], tmp_path)
    assert proc.returncode == 2
    assert "--episodes" in proc.stderr


def test_help_documents_every_flag(tmp_path):
    proc = run(["train", "patterns", "--help"], tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0
    from dataclasses import fields

    from plasticity.cli import RunOptions
    from plasticity.config import PatternsConfig

    for f in (*fields(PatternsConfig), *fields(RunOptions)):
        flag = "--" + f.name.replace("_", "-")
        # `task` is the subcommand itself (`plasticity train patterns`), not a flag.
        assert (flag in proc.stdout) == (f.name != "task"), flag


@pytest.mark.slow
def test_train_against_a_real_mlflow_server(tmp_path):
    server, uri = start_mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}")
    try:
        proc = run(["train", "patterns", "--preset", "small", "--episodes", "512", "--eval-every", "256",
                    "--no-progress", "--experiment", "server-test", "--tracking-uri", uri], tmp_path)
        assert proc.returncode == 0, proc.stderr
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("server-test")
        (r,) = client.search_runs([exp.experiment_id])
        assert r.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "eval/bit_error_erased")] == [256, 512]
        assert any(Path(tmp_path / "artifacts").rglob("checkpoint.pt"))
        assert not (tmp_path / "mlruns.db").exists()
    finally:
        stop(server)


def test_two_processes_opening_a_fresh_sqlite_store_at_once(tmp_path):
    """MLflow creates a SQLite store's tables on first use; two processes doing that at
    once (two runs started together in a fresh folder) used to fail with "duplicate
    column name". Each round: a fresh store, two processes opening it together."""
    code = ("import sys; from plasticity.tracking.mlflow import check_tracking, experiment_id; "
            "c = check_tracking(sys.argv[1]); experiment_id(c, 'plasticity'); print('ok')")
    for i in range(3):
        uri = f"sqlite:///{tmp_path / f'round{i}.db'}"
        procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]


def test_the_resume_command_repeats_the_run_options_and_masks_passwords():
    """What a stopped run prints to go on: the checkpoint holds the config and schedule, not
    the run options, so those given differently from their defaults are repeated."""
    from plasticity.cli import RunOptions, resume_command

    ckpt = Path("runs/my run/checkpoint.pt")
    assert (resume_command("patterns", ckpt, RunOptions())
            == "plasticity train patterns --resume 'runs/my run/checkpoint.pt'")
    assert (resume_command("maze", "c.pt", RunOptions(tracking=False, tracking_uri="http://h:5000", progress=False))
            == "plasticity train maze --resume c.pt --no-tracking --no-progress")
    tracked = RunOptions(tracking_uri="http://admin:s3cret@mlflow:5000", experiment="eta scan")
    assert (resume_command("images", "c.pt", tracked)
            == "plasticity train images --resume c.pt --tracking-uri 'http://admin:***@mlflow:5000' "
               "--experiment 'eta scan'")


def test_help_into_a_closed_pipe_stops_quietly(tmp_path):
    """`plasticity train patterns --help | head -1`: the reader has gone away; the command
    stops with 141 (128 + SIGPIPE) and says nothing on stderr (before: a false 'Broken
    pipe: check the path, its permissions and the free disk space' error). The pipe's
    reading end is closed before the command writes, so every write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "plasticity.cli", "train", "patterns", "--help"], cwd=tmp_path,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
