"""The "Bring your own task" and "Write a rule" pages followed as a reader would: the files
are the page's code blocks with a `title`, the commands its bash block, run in a shell in
the package's folder. One change: the page's `pip install -e .` becomes `pip install
--no-deps --target SITE .` with SITE on PYTHONPATH (the same installed entry point), so
this venv's registry stays the built-in one for the other tests. The page's sweep line
is left out here (the plugin sweeps are tests/test_plugins_sweep.py and the cluster
test); everything else runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
BLOCK = re.compile(r'^```(\w+)([^\n]*)\n(.*?)^```', re.S | re.M)


def page_parts(page: str) -> tuple[dict[str, str], list[str]]:
    """({file: content} of the titled blocks, the lines of the page's "Run it" bash block)."""
    text = (REPO / "docs" / page).read_text()
    files, commands = {}, []
    for lang, info, body in BLOCK.findall(text):
        title = re.search(r'title="([^"]+)"', info)
        if title:
            files[title.group(1)] = body
        elif lang == "bash" and "pip install -e ." in body:
            commands = [ln for ln in body.splitlines() if ln.strip()]
    return files, commands


def follow(page: str, tmp_path: Path) -> dict[str, subprocess.CompletedProcess]:
    files, commands = page_parts(page)
    assert files and commands, f"{page}: no titled code blocks or no bash block with pip install -e ."
    folder = tmp_path / "pkg"
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(body)
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("PLASTICITY_PLUGINS", "PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(site), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    done = {}
    for line in commands:
        if line.startswith("plasticity sweep"):
            continue
        run = line.replace("pip install -e .", f"{sys.executable} -m pip install --quiet --no-deps --target {site} .")
        proc = subprocess.run(["bash", "-c", run], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{page}: `{line}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        done[line] = proc
    return done


def test_bring_your_own_task_page(tmp_path):
    done = follow("own-task.md", tmp_path)
    assert "tasks: fewshot" in done["plasticity plugins"].stdout
    trained = done["plasticity train fewshot --no-tracking"].stdout
    got = dict(re.findall(r"eval/(mse|mse_of_zero)=([\d.e-]+)", trained))
    assert float(got["mse"]) < 0.8 * float(got["mse_of_zero"]), trained  # it learned from the shots
    evaluated = next(p for line, p in done.items() if line.startswith("plasticity evaluate"))
    assert "mse" in evaluated.stdout


def test_write_a_rule_page(tmp_path):
    done = follow("write-a-rule.md", tmp_path)
    assert "rules: outstar" in done["plasticity plugins"].stdout
    trained = next(p for line, p in done.items() if line.startswith("plasticity train"))
    assert "fused kernels: cpp" in trained.stderr + trained.stdout  # the rule ran on the generated kernels
    err = float(re.search(r"eval/bit_error_all=([\d.e-]+)", trained.stdout).group(1))
    assert err < 0.25, trained.stdout  # chance is 0.5
