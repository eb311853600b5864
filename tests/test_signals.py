"""Every signal a scheduler or a terminal sends, to real processes: `plasticity train`
stopped by SIGHUP (a `kill -HUP`, and a terminal that really goes away), the warning
signal in both modes, a sweep driver stopped by SIGTERM and by a SIGHUP to its whole
process group, the Slurm script (run by bash, a fake `scontrol` on PATH) and the
Kubernetes Job. See docs/preemption.md."""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from plasticity.train import load_checkpoint
from tests.test_resume import assert_same_run, cli, finish, run_folder, wait_for_evaluations
from tests.test_sweep import REPO
from tests.test_sweep_faults import _result_mtimes, _terminated

# A short patterns run: stops land after the first evaluation, no episode checkpoint before the end.
RUN = ["train", "patterns", "--preset", "small", "--episodes", "3072", "--eval-every", "384", "--eval-episodes",
       "64", "--save-every", "1000000", "--no-tracking", "--no-progress"]
TOTAL = 3072


def test_the_resume_command_repeats_the_warning_options():
    from plasticity.cli import RunOptions, resume_command

    assert resume_command("patterns", "c.pt", RunOptions()) == "plasticity train patterns --resume c.pt"
    opts = RunOptions(tracking=False, warning_signal="USR2", on_warning="checkpoint")
    assert (resume_command("patterns", "c.pt", opts)
            == "plasticity train patterns --resume c.pt --no-tracking --warning-signal USR2 --on-warning checkpoint")


def test_a_bad_warning_signal_is_one_line(tmp_path):
    code, _, err = finish(cli(*RUN, "--warning-signal", "KILL", cwd=tmp_path), timeout=120)
    assert code == 2 and err.count("\n") == 1 and "--warning-signal" in err, err


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run done in one go: what every stopped-and-resumed run must end as."""
    out = tmp_path_factory.mktemp("straight")
    code, _, err = finish(cli(*RUN, "--out", str(out), cwd=out))
    assert code == 0, err
    return load_checkpoint(run_folder(out) / "checkpoint.pt")


def _stop_and_resume(tmp_path, sig: signal.Signals, code: int, name: str, straight: dict, *extra: str) -> None:
    proc = cli(*RUN, *extra, "--out", str(tmp_path / "runs"), cwd=tmp_path)
    wait_for_evaluations(tmp_path / "runs", proc)
    proc.send_signal(sig)
    got, _, err = finish(proc)
    assert got == code, err
    folder = run_folder(tmp_path / "runs")
    episode = load_checkpoint(folder / "checkpoint.pt")["episode"]
    assert 0 < episode < TOTAL
    again = shlex.join(["plasticity", "train", "patterns", "--resume", str(folder / "checkpoint.pt"), "--no-tracking",
                        "--no-progress", *extra])
    assert f"plasticity: stopped by {name} at episode {episode}; checkpoint saved: continue with `{again}`" in err
    assert "Traceback" not in err
    got, _, err = finish(cli(*shlex.split(again)[1:], cwd=tmp_path))
    assert got == 0, err
    assert_same_run(straight, load_checkpoint(folder / "checkpoint.pt"))


@pytest.mark.slow
def test_sighup_stops_like_sigterm_with_exit_129_and_resumes_to_the_same_run(tmp_path, straight):
    _stop_and_resume(tmp_path, signal.SIGHUP, 129, "SIGHUP", straight)


@pytest.mark.slow
def test_the_warning_signal_stops_with_exit_138_and_resumes_to_the_same_run(tmp_path, straight):
    _stop_and_resume(tmp_path, signal.SIGUSR1, 138, "SIGUSR1 (time nearly up)", straight)


@pytest.mark.slow
def test_the_warning_signal_can_checkpoint_and_go_on(tmp_path, straight):
    """--on-warning checkpoint: a checkpoint of the episode the signal fell in is on disk at
    once, the run goes on, and it ends as the uninterrupted run (the save draws no random
    numbers). Another --warning-signal than the default one."""
    proc = cli(*RUN, "--warning-signal", "USR2", "--on-warning", "checkpoint", "--out", str(tmp_path / "runs"),
               cwd=tmp_path)
    wait_for_evaluations(tmp_path / "runs", proc)
    proc.send_signal(signal.SIGUSR2)
    for line in proc.stderr:
        if "checkpoint at episode" in line:
            break
    folder = run_folder(tmp_path / "runs")
    episode = load_checkpoint(folder / "checkpoint.pt")["episode"]
    assert line.strip() == (f"plasticity: SIGUSR2 (time nearly up): checkpoint at episode {episode} in "
                            f"{tmp_path / 'runs' / folder.name / 'checkpoint.pt'}; training goes on"), line
    assert 0 < episode < TOTAL and proc.poll() is None, "the checkpoint is written while the run goes on"
    code, out, err = finish(proc)
    assert code == 0 and out.startswith("done: "), err
    assert_same_run(straight, load_checkpoint(folder / "checkpoint.pt"))


def _controlling_terminal():  # runs in the child, before exec: the pty becomes its terminal
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.slow
def test_a_terminal_that_goes_away_stops_the_run_with_a_checkpoint(tmp_path):
    """An SSH session that drops: the run's terminal (a pseudo-terminal here, with the
    progress bar on it) is hung up, the kernel sends SIGHUP, and every write to the
    terminal fails from then on. The run still writes its checkpoint and exits 129."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a bar needs columns
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Long enough that the hang-up lands mid-run, whatever the machine's speed.
    args = [a for a in RUN if a != "--no-progress"] + ["--episodes", "200000"]
    proc = subprocess.Popen([sys.executable, "-m", "plasticity.cli", *args, "--out", str(tmp_path / "runs")],
                            cwd=tmp_path, env=env, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=_controlling_terminal)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 300
        # After the first evaluation, with the progress bar on the terminal.
        while time.monotonic() < deadline and not (list((tmp_path / "runs").glob("*/metrics.jsonl"))
                                                   and b"ep/s" in seen):
            assert proc.poll() is None, seen.decode(errors="replace")[-2000:]
            seen += _read_some(master)
        assert b"ep/s" in seen, seen.decode(errors="replace")[-2000:]
    finally:
        os.close(master)  # the hang-up
    assert proc.wait(timeout=300) == 129
    ckpt = load_checkpoint(run_folder(tmp_path / "runs") / "checkpoint.pt")
    assert 0 < ckpt["episode"] < 200000


def _read_some(fd: int) -> bytes:
    import select

    ready, _, _ = select.select([fd], [], [], 0.2)
    try:
        return os.read(fd, 65536) if ready else b""
    except OSError:
        return b""


# ----------------------------------------------------------------------- the sweep driver

SWEEP = ["--task", "patterns", "--num-samples", "3", "--max-episodes", "512", "--eval-every", "128",
         "--scheduler", "fifo", "--max-concurrent", "1", "--name", "sig", "--no-tracking"]


def _start_sweep(tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # Tune's state saved at every step of its loop: what the stop leaves is the state at the stop.
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", TUNE_GLOBAL_CHECKPOINT_S="0")
    return subprocess.Popen([sys.executable, "-m", "tune.sweep", *SWEEP], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_a_finished_trial(results: Path, driver: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and not (_terminated(results) and len(list(results.glob("*/result.json"))) >= 2):
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.2)
    assert _terminated(results), "no trial finished within the timeout"


def _stopped(driver: subprocess.Popen, code: int, name: str) -> str:
    try:
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == code, err[-3000:]
    again = f"python -m tune.sweep {shlex.join(SWEEP)} --resume"
    lines = [ln for ln in err.splitlines() if ln.startswith("plasticity sweep:")]
    assert lines == [f"plasticity sweep: stopped by {name}; continue with `{again}`"], err[-3000:]
    # Not Ray's native stack dump, nor a traceback.
    for noise in ("*** SIG", "PC: @", "Traceback", "Failed to connect to GCS"):
        assert noise not in err + out, (noise, err[-3000:])
    return again


@pytest.mark.slow
def test_sigterm_stops_a_sweep_with_one_line_and_resume_finishes_it(tmp_path):
    driver = _start_sweep(tmp_path)
    results = tmp_path / "ray_results" / "sig"
    _wait_for_a_finished_trial(results, driver)
    driver.send_signal(signal.SIGTERM)
    again = _stopped(driver, 143, "SIGTERM")
    done_before = _terminated(results)
    assert 1 <= len(done_before) < 3, done_before
    stamps = {k: v for k, v in _result_mtimes(results).items() if k in done_before}

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run(shlex.split(again.replace("python", sys.executable, 1)), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3/3 trials finished without error" in proc.stdout
    after = _result_mtimes(results)
    assert {k: after[k] for k in stamps} == stamps, "a finished trial ran again"
    assert len(_terminated(results)) == 3


@pytest.mark.slow
def test_a_sighup_to_the_whole_process_group_stops_a_sweep_with_one_line(tmp_path):
    """A terminal that goes away signals its whole process group: the driver and Ray's own
    processes (its GCS and raylet, started by the driver). The driver still stops the way
    Tune stops on Ctrl-C and leaves nothing running."""
    driver = _start_sweep(tmp_path)
    _wait_for_a_finished_trial(tmp_path / "ray_results" / "sig", driver)
    os.killpg(driver.pid, signal.SIGHUP)
    _stopped(driver, 129, "SIGHUP")
    time.sleep(3)
    left = subprocess.run(["pgrep", "-g", str(driver.pid)], capture_output=True, text=True).stdout.split()
    assert not left, left


# ----------------------------------------------------------------------- the cluster files

@pytest.mark.slow
def test_the_slurm_script_requeues_on_the_warning_and_the_requeued_job_resumes(tmp_path):
    """cluster/slurm/train.sbatch run by bash as Slurm would (SLURM_JOB_ID set), with a
    fake `scontrol` on PATH: the warning signal sent to the batch shell (`--signal=B:USR1`)
    reaches the run, which checkpoints and exits 138; the script requeues the job; the
    requeued job resumes from the checkpoint and finishes the run."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (fake / "scontrol").chmod(0o755)
    log = tmp_path / "scontrol.log"
    env = {**os.environ, "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SCONTROL_LOG": str(log), "SLURM_JOB_ID": "4242", "PYTHONUNBUFFERED": "1", "TASK": "patterns",
           "ARGS": shlex.join(RUN[2:-2]), "OPTS": "--no-tracking --no-progress"}
    script = str(REPO / "cluster" / "slurm" / "train.sbatch")
    job = subprocess.Popen(["bash", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    runs = tmp_path / "runs" / "slurm-4242"
    wait_for_evaluations(runs, job)
    job.send_signal(signal.SIGUSR1)
    code, out, err = finish(job)
    assert code == 138, err
    assert log.read_text() == "requeue 4242\n"
    assert "stopped by SIGUSR1 (time nearly up)" in err and "requeueing job 4242" in out
    episode = load_checkpoint(run_folder(runs) / "checkpoint.pt")["episode"]
    assert 0 < episode < TOTAL

    code, out, err = finish(subprocess.Popen(["bash", script], cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"},
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert code == 0, err
    assert f"resuming at episode {episode} of {TOTAL}" in err and "done: " in out
    assert load_checkpoint(run_folder(runs) / "checkpoint.pt")["episode"] == TOTAL
    assert log.read_text() == "requeue 4242\n", "requeued once"


def test_the_slurm_script_asks_for_the_warning_and_the_requeue():
    text = (REPO / "cluster" / "slurm" / "train.sbatch").read_text()
    directives = [ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert "--signal=B:USR1@120" in directives and "--requeue" in directives
    assert subprocess.run(["bash", "-n", str(REPO / "cluster" / "slurm" / "train.sbatch")]).returncode == 0


def test_the_kubernetes_job_gives_the_run_time_to_checkpoint():
    job = yaml.safe_load((REPO / "cluster" / "k8s" / "train-job.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    # The script is PID 1: it takes SIGTERM and passes it on (a PID 1 without a handler ignores it).
    assert container["command"][:2] == ["bash", "cluster/slurm/train.sbatch"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RUNS"].startswith("/runs/") and {m["mountPath"] for m in container["volumeMounts"]} == {"/runs"}
    # A stopped pod (exit 143 on SIGTERM, or evicted) does not count as a failure; a new one resumes.
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert any(r["action"] == "Ignore" and r.get("onExitCodes", {}).get("values") == [129, 138, 143] for r in rules)
    assert any(r["action"] == "Ignore" and r.get("onPodConditions") for r in rules)
