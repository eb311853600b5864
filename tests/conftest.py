"""Shared fixtures: data paths (the real data, or small files generated in its layout),
float64 helpers, a relative-error assert."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLASTICITY_TEST_DATA", REPO.parent / "shared" / "data"))
HAS_SHARED_DATA = (SHARED_DATA / "cifar10").is_dir() and (SHARED_DATA / "omniglot").is_dir()
needs_shared_data = pytest.mark.skipif(
    not HAS_SHARED_DATA, reason=f"needs the real CIFAR-10/Omniglot files: set PLASTICITY_TEST_DATA to the shared "
                                f"data folder (none at {SHARED_DATA})")
"""For tests that need the real images (their counts, or learning on them); tests of the
file formats use `generated_data` instead."""


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory) -> Path:
    """A data folder in the standard layouts (tests/datagen.py): CIFAR-10 python batches
    of 30 images each, an Omniglot minimal set of 3 alphabets x 8 characters x 4 drawings
    and 2 one-shot runs."""
    from tests.datagen import write_cifar, write_omniglot

    root = tmp_path_factory.mktemp("generated-data")
    write_cifar(root, subdir="cifar10")
    write_omniglot(root)
    return root


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10, name: str = "") -> None:
    """Relative error of the whole tensor (as in flash-linear-attention's tests)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * max(scale, 1e-12), f"{name}: max abs err {err:.3e} vs scale {scale:.3e}"


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# Scheduling on the test processes (pyproject.toml: `-n 3 --dist loadfile
# --no-loadscope-reorder`). Every file is one unit, kept on one process (its module
# fixtures run once), except the files that start a Ray (a local one, a cluster, Ray
# Serve): those are one unit together, run one after another on one process. Three Rays at
# once on CI's 2 cores starved their health checks and lost actors (stop 29). That unit and
# the other long files go first (xdist's own reordering, by number of tests, is off), so
# the processes end together. Order and grouping only; every file still runs.
RAY_FILES = (
    "test_cluster_faults.py", "test_cluster_security.py", "test_local_ray_security.py", "test_sweep.py",
    "test_signals.py", "test_sweep_faults.py", "test_sweep_summary.py", "test_serving_http.py",
    "test_sweep_quiet.py", "test_bench_scale.py", "test_sweep_gpus.py", "test_plugins_sweep.py",
    "test_sweep_api.py", "test_sweep_tasks.py",
)
LONG_FILES = (
    *RAY_FILES, "test_bad_input.py", "test_resume.py", "test_plugins.py", "test_cli.py", "test_train.py",
    "test_readme.py", "test_fused_triton.py", "test_maze.py", "test_a2c.py",
)


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's file scheduling, with the Ray files as one unit."""
    from xdist.scheduler import LoadFileScheduling

    class FilesAndRay(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "<the files that start a Ray>" if Path(path).name in RAY_FILES else path

    return FilesAndRay(config, log)
