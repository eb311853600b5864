"""The example plugin package (examples/recall-plugin) as a user installs it: `pip install`
from its folder (a real build of its wheel, its entry point recorded by pip), then its own
tests against the installed package, and `plasticity plugins` naming it. It is installed
into a folder of its own put on PYTHONPATH rather than into this venv, so the other tests'
registries stay the built-in ones. The same package goes through `ray job submit` on a
two-node cluster and is served over HTTP in tests/test_cluster_faults.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.test_plugins import EXAMPLE, MODULE, plasticity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example, installed by pip into a folder (`--no-deps`: plasticity is this venv's)."""
    folder, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "recall-plugin"
    # From a copy: setuptools builds in the source folder, which stays as it is in the repository.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_pip_installs_the_example_as_a_plugin(site, tmp_path):
    assert list(site.glob("plasticity_recall-0.1.0.dist-info/entry_points.txt")), sorted(p.name for p in site.iterdir())
    listed = plasticity("plugins", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert listed.returncode == 0, listed.stderr
    assert f"{MODULE}  (entry point recall (plasticity-recall 0.1.0);" in listed.stdout, listed.stdout
    assert str(site) in listed.stdout  # loaded from the installed copy, not the example's folder


def test_the_examples_own_tests_pass_against_the_installed_package(site, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PLASTICITY_PLUGINS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    # Its tests, from a copy of its tests folder only: the package they import is the installed one.
    shutil.copytree(EXAMPLE / "tests", tmp_path / "tests")
    shutil.copy(EXAMPLE / "pyproject.toml", tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout, proc.stdout[-2000:]  # none skipped: the entry point was found
