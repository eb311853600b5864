"""`--gpus-per-trial`: Ray packs trials onto a GPU (fractional GPUs) and each trial trains
on the GPU it was given. Tested on a CPU machine with a local Ray that advertises one
GPU that is not there: the placement is Ray's, the device falls back to CPU."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="the sweep extra is not installed (pip install -e '.[sweep]')")


@pytest.fixture
def fake_gpu_ray(tmp_path, monkeypatch):
    """A local Ray with 4 CPUs and 1 GPU (advertised, not present), cwd in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from plasticity.localray import start_local_ray

    # The sweep's own way of starting Ray (loopback, a fresh token), with a GPU advertised;
    # the Ray settings it puts in the environment are this test's only.
    saved = dict(os.environ)
    start_local_ray(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow
def test_quarter_gpu_trials_run_four_at_once_each_on_its_gpu(fake_gpu_ray, tmp_path):
    from tune.sweep import SweepArgs, run_sweep

    # Ray's own account while the sweep runs: a moment with no CPU (4 trials x 1 CPU) and no
    # GPU left is 4 trials placed at once, sharing the one GPU a quarter each.
    samples, done = [], threading.Event()

    def watch():
        while not done.is_set():
            free = ray.available_resources()
            samples.append((free.get("CPU", 0.0), free.get("GPU", 0.0)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = run_sweep(SweepArgs(task="patterns", num_samples=4, max_episodes=1024, eval_every=512,
                                      scheduler="fifo", max_concurrent=4, cpus_per_trial=1, gpus_per_trial=0.25,
                                      no_tracking=True, name="gpus", max_failures=0))
    finally:
        done.set()
        watcher.join()
    assert len(results) == 4 and all(r.error is None for r in results), [r.error for r in results]
    assert (0.0, 0.0) in samples, f"never 4 trials at once: lowest free (CPU, GPU) {min(samples)}"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for r in results:
        placement = json.loads((Path(r.path) / "placement.json").read_text())
        assert placement["gpu_ids"] == "0" and placement["cuda_visible_devices"] == "0", placement
        assert placement["device"] == expected, placement
        assert r.metrics["episodes"] == 1024


@pytest.mark.slow
def test_more_gpu_than_the_cluster_has_is_refused(fake_gpu_ray):
    from plasticity.errors import ConfigError
    from tune.sweep import SweepArgs, run_sweep

    with pytest.raises(ConfigError, match=r"--gpus-per-trial 2 but the Ray cluster has 1 GPUs"):
        run_sweep(SweepArgs(task="patterns", num_samples=1, gpus_per_trial=2, no_tracking=True, name="too-many"))
