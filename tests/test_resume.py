"""Preemption, as a user meets it: `plasticity train` in a real subprocess, stopped by a
real SIGTERM / SIGINT / SIGKILL mid-way between checkpoints, then `--resume CKPT` with
no other flag. The resumed run must end bit-identical (weights, optimiser state, every
non-timing metric) to the same run done in one go, for every task."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plasticity.train import load_checkpoint

pytestmark = pytest.mark.slow

# Tiny runs of each task: the signal lands after the first evaluation, with no episode
# checkpoint before the end (--save-every larger than the run).
TASKS = {
    # With the cosine learning-rate schedule: resuming must continue it exactly.
    "patterns": ["--preset", "small", "--episodes", "6144", "--eval-every", "768", "--eval-episodes", "64",
                 "--lr-schedule", "cosine", "--lr-final", "0.05"],
    "maze": ["--preset", "small", "--episode-steps", "20", "--hidden", "16", "--batch-size", "8",
             "--episodes", "480", "--eval-every", "48", "--eval-episodes", "16"],
    "images": ["--preset", "small", "--image-size", "8", "--batch-size", "4", "--episodes", "480",
               "--eval-every", "48", "--eval-episodes", "8"],
    "omniglot": ["--preset", "small", "--channels", "8", "--n-way", "2", "--batch-size", "4", "--episodes", "480",
                 "--eval-every", "48", "--eval-episodes", "12", "--split", "random"],
}
COMMON = ["--save-every", "1000000", "--no-tracking", "--no-progress"]


def cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "plasticity.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def task_args(task: str, data: Path | None) -> list[str]:
    args = ["train", task, *TASKS[task], *COMMON]
    return [*args, "--data-dir", str(data)] if task in ("images", "omniglot") else args


def run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def wait_for_evaluations(folder_parent: Path, proc: subprocess.Popen, count: int = 1, timeout: float = 300) -> None:
    """Until the run has written `count` evaluations (so the stop falls mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = list(folder_parent.glob("*/metrics.jsonl"))
        if metrics and len(metrics[0].read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError("no evaluation within the timeout")


def timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in history]


def assert_same_run(a: dict, b: dict) -> None:
    assert a["episode"] == b["episode"]
    assert {**a["config"], "out": None} == {**b["config"], "out": None}
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"parameter {name} differs"
    for (i, sa), sb in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].values(), strict=True):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), f"optimiser state {i}/{k} differs"
    assert timeless(a["history"]) == timeless(b["history"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.datagen import write_cifar, write_omniglot

    root = tmp_path_factory.mktemp("data")
    write_cifar(root, subdir="cifar10")
    write_omniglot(root, alphabets=3, characters=8, drawings=4)
    return root


@pytest.mark.parametrize("task,sig", [("patterns", signal.SIGTERM), ("patterns", signal.SIGINT),
                                      ("maze", signal.SIGTERM), ("images", signal.SIGTERM),
                                      ("omniglot", signal.SIGTERM)], ids=lambda x: getattr(x, "name", x))
def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path, data, task, sig):
    args = task_args(task, data)
    straight = cli(*args, "--out", str(tmp_path / "straight"), cwd=tmp_path)
    code, _, err = finish(straight)
    assert code == 0, err

    stopped = cli(*args, "--out", str(tmp_path / "stopped"), cwd=tmp_path)
    wait_for_evaluations(tmp_path / "stopped", stopped)
    stopped.send_signal(sig)
    code, _, err = finish(stopped)
    assert code == 128 + sig, err
    folder = run_folder(tmp_path / "stopped")
    ckpt = load_checkpoint(folder / "checkpoint.pt")
    total = int(TASKS[task][TASKS[task].index("--episodes") + 1])
    assert 0 < ckpt["episode"] < total, "the stop should fall mid-run"
    # The command the stop prints: the checkpoint, and the run options it does not hold.
    again = f"plasticity train {task} --resume {folder / 'checkpoint.pt'} --no-tracking --no-progress"
    assert f"continue with `{again}`" in err

    # Resume with exactly that command: no preset, no schedule flags, no data folder.
    code, _, err = finish(cli(*shlex.split(again)[1:], cwd=tmp_path))
    assert code == 0, err
    assert f"resuming at episode {ckpt['episode']} of {total}" in err
    assert run_folder(tmp_path / "stopped") == folder, "the run continues in its own folder"
    assert_same_run(load_checkpoint(run_folder(tmp_path / "straight") / "checkpoint.pt"),
                    load_checkpoint(folder / "checkpoint.pt"))
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert timeless(lines) == timeless(load_checkpoint(folder / "checkpoint.pt")["history"])


def test_sigkill_loses_at_most_the_checkpoint_interval(tmp_path):
    args = ["train", "patterns", *TASKS["patterns"], *COMMON, "--save-minutes", "0.0001"]
    proc = cli(*args, "--out", str(tmp_path), cwd=tmp_path)
    # Kill after the second evaluation (episode 1536). The wall-clock save runs after each
    # step, so the first evaluation (768; it takes longer than the 6 ms interval) was saved
    # at the latest right after it. A kill at once after the first evaluation can land
    # before that save (the evaluation is written first); it failed so once on a fast machine.
    wait_for_evaluations(tmp_path, proc, count=2)
    proc.kill()
    finish(proc)
    ckpt = load_checkpoint(run_folder(tmp_path) / "checkpoint.pt")
    # Only the wall-clock interval can have written it: --save-every is larger than the run.
    assert ckpt["episode"] >= 768


def test_resume_keeps_the_run_settings_and_refuses_to_change_its_definition(tmp_path):
    code, _, err = finish(cli("train", "patterns", "--preset", "small", "--episodes", "256", "--eval-every", "128",
                              "--lr", "0.002", *COMMON, "--out", str(tmp_path), cwd=tmp_path))
    assert code == 0, err
    ckpt_path = run_folder(tmp_path) / "checkpoint.pt"
    # A flag that defines the run, with another value: one line, exit 2, nothing written.
    before = ckpt_path.read_bytes()
    code, _, err = finish(cli("train", "patterns", "--resume", str(ckpt_path), "--rule", "oja", "--no-tracking",
                              cwd=tmp_path))
    assert code == 2 and err.count("\n") == 1 and "--rule cannot change when resuming" in err, err
    assert ckpt_path.read_bytes() == before
    # Schedule flags may change; the others (batch 32 and lr 0.002 here) stay the checkpoint's.
    code, _, err = finish(cli("train", "patterns", "--resume", str(ckpt_path), "--episodes", "512", "--no-tracking",
                              "--no-progress", cwd=tmp_path))
    assert code == 0, err
    assert "resuming at episode 256 of 512 with episodes=512 (was 256)" in err
    cfg = load_checkpoint(ckpt_path)["config"]
    assert (cfg["batch_size"], cfg["lr"], cfg["episodes"]) == (32, 0.002, 512)
    assert load_checkpoint(ckpt_path)["episode"] == 512


def test_resume_from_a_loose_file_starts_a_new_run_folder(tmp_path):
    code, _, err = finish(cli("train", "patterns", "--preset", "small", "--episodes", "128", "--eval-every", "64",
                              *COMMON, "--out", str(tmp_path / "runs"), cwd=tmp_path))
    assert code == 0, err
    loose = tmp_path / "downloads"
    loose.mkdir()
    (loose / "model.pt").write_bytes((run_folder(tmp_path / "runs") / "checkpoint.pt").read_bytes())
    code, _, err = finish(cli("train", "patterns", "--resume", str(loose / "model.pt"), "--episodes", "192",
                              "--out", str(tmp_path / "more"), "--no-tracking", "--no-progress", cwd=tmp_path))
    assert code == 0, err
    assert sorted(p.name for p in loose.iterdir()) == ["model.pt"], "nothing is written beside the file"
    assert load_checkpoint(run_folder(tmp_path / "more") / "checkpoint.pt")["episode"] == 192


def test_sigterm_marks_the_mlflow_run_killed_and_resume_continues_it(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["train", "patterns", *TASKS["patterns"], "--save-every", "1000000", "--no-progress",
            "--tracking-uri", uri, "--out", str(tmp_path / "runs")]
    proc = cli(*args, cwd=tmp_path)
    wait_for_evaluations(tmp_path / "runs", proc)
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143, err
    folder = run_folder(tmp_path / "runs")
    run_id = (folder / "mlflow_run_id").read_text().strip()
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED"
    again = f"plasticity train patterns --resume {folder / 'checkpoint.pt'} --tracking-uri {uri} --no-progress"
    assert run.data.tags["resumable"] == again and f"continue with `{again}`" in err
    code, _, err = finish(cli(*shlex.split(again)[1:], cwd=tmp_path))
    assert code == 0, err
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "eval/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 6144


def test_sigterm_while_the_kernels_build_stops_at_once_with_one_line(tmp_path):
    """A job preempted during its first minute, while the fused C++ kernels compile (a fresh
    TORCH_EXTENSIONS_DIR forces the build): it stops within seconds with exit code 143 and
    one line saying nothing was lost, no traceback, and no compiler left running."""
    ext = tmp_path / "torch_extensions"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_EXTENSIONS_DIR": str(ext)}
    proc = subprocess.Popen([sys.executable, "-m", "plasticity.cli", "train", "patterns", "--preset", "small",
                             "--episodes", "64", *COMMON, "--out", str(tmp_path / "runs")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "building the fused C++ kernels" in line:
            break
    assert any("building the fused C++ kernels" in line for line in seen), "".join(seen)
    time.sleep(3)  # the compiler is running
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc, timeout=60)
    assert code == 143 and time.monotonic() - start < 20, err
    assert ("plasticity: stopped by SIGTERM while building the fused C++ kernels, before training: nothing new to "
            "save; to go on, run the same command again") in err
    assert "Traceback" not in err
    time.sleep(1)
    left = [p for p in Path("/proc").glob("[0-9]*") if str(ext).encode() in _cmdline(p)]
    assert not left, [_cmdline(p) for p in left]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
