"""Plugins (plasticity/plugins.py): a user's own task, rule and search space, from the
example package in examples/recall-plugin, loaded as users load them: an installed
package's entry point (a real `*.dist-info/entry_points.txt` on the path, read by
importlib.metadata), $PLASTICITY_PLUGINS and `--plugin`; then trained, stopped with
SIGTERM and resumed bit-exact, and evaluated, with nothing in the project edited. Broken
plugins get one line naming the plugin and the problem, and the built-in tasks still work."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "recall-plugin"
MODULE = "plasticity_recall.plugin"


def plasticity(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("PLASTICITY_PLUGINS", "PYTHONPATH")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "plasticity.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=timeout)


def on_path(*folders: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(str(f) for f in folders)}


def installed(tmp_path: Path, module: str = MODULE, name: str = "plasticity-recall") -> Path:
    """A folder that makes `module` an installed plugin, as pip leaves one: its
    dist-info with the entry point (the example's package itself stays where it is)."""
    site = tmp_path / "site"
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[plasticity.plugins]\nrecall = {module}\n")
    return site


def write_plugin(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return folder


def test_an_installed_entry_point_is_loaded_by_every_command(tmp_path):
    env = on_path(installed(tmp_path), EXAMPLE)
    listed = plasticity("plugins", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert f"{MODULE}  (entry point recall (plasticity-recall 0.1.0);" in listed.stdout
    assert "tasks: recall" in listed.stdout and "rules: instar" in listed.stdout and "spaces: recall" in listed.stdout
    # The task in the usage, its flags and presets in `train --help`, the rule among the choices.
    assert "recall" in plasticity("--help", cwd=tmp_path, env=env).stdout
    helped = plasticity("train", "recall", "--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "--num-pairs" in helped.stdout and "small, large" in helped.stdout
    bad = plasticity("train", "recall", "--rule", "nosuch", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "instar" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_plugins_from_the_environment_and_the_command_line(tmp_path):
    by_env = plasticity("plugins", cwd=tmp_path, env={**on_path(EXAMPLE), "PLASTICITY_PLUGINS": f" {MODULE}, "})
    assert by_env.returncode == 0 and f"{MODULE}  ($PLASTICITY_PLUGINS;" in by_env.stdout
    # --plugin anywhere on the line, twice is once.
    by_flag = plasticity("--plugin", MODULE, "plugins", f"--plugin={MODULE}", cwd=tmp_path, env=on_path(EXAMPLE))
    assert by_flag.returncode == 0 and by_flag.stdout.count(MODULE) == 1, by_flag.stdout
    none = plasticity("plugins", cwd=tmp_path)
    assert none.returncode == 0 and none.stdout.startswith("no plugins:")


def test_train_sigterm_resume_and_evaluate_a_plugin_task(tmp_path):
    from tests.test_resume import assert_same_run, run_folder, timeless, wait_for_evaluations

    env = {**on_path(EXAMPLE), "PYTHONUNBUFFERED": "1"}
    args = ["train", "recall", "--rule", "instar", "--episodes", "6144", "--eval-every", "768", "--eval-episodes",
            "64", "--save-every", "1000000", "--no-tracking", "--no-progress", "--plugin", MODULE]
    straight = plasticity(*args, "--out", str(tmp_path / "straight"), cwd=tmp_path, env=env)
    assert straight.returncode == 0, straight.stderr
    full = {k: v for k, v in os.environ.items() if k != "PLASTICITY_PLUGINS"} | env
    stopped = subprocess.Popen([sys.executable, "-m", "plasticity.cli", *args, "--out", str(tmp_path / "stopped")],
                               cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_evaluations(tmp_path / "stopped", stopped)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode == 143, err
    folder = run_folder(tmp_path / "stopped")
    again = (f"plasticity train recall --resume {folder / 'checkpoint.pt'} --plugin {MODULE} --no-tracking "
             "--no-progress")
    assert f"continue with `{again}`" in err, err
    resumed = plasticity(*shlex.split(again)[1:], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    # Read as files (this test process has not loaded the plugin: the checkpoints' task is unknown here).
    a, b = (torch.load(run_folder(tmp_path / d) / "checkpoint.pt", map_location="cpu", weights_only=False)
            for d in ("straight", "stopped"))
    assert_same_run(a, b)
    assert timeless(b["history"])[-1]["eval/bit_error"] < 0.25, "the plastic network learned nothing"
    # The bar and the learning curve use the task's own metric.
    assert (folder / "learning_curve.png").is_file() and (folder / "completion.png").is_file()

    scored = plasticity("evaluate", str(folder / "checkpoint.pt"), "--plugin", MODULE, cwd=tmp_path, env=env)
    assert scored.returncode == 0 and "bit_error" in scored.stdout, scored.stderr
    # Served (the layout the task gives): whole episodes answer as the task's own sampler does.
    code = textwrap.dedent(f"""
        import torch
        from plasticity.config import CONFIGS
        from plasticity.serving import ServedModel
        from plasticity.tasks import make_task
        served = ServedModel.from_checkpoint({str(folder / 'checkpoint.pt')!r})
        task = make_task(served.cfg)
        ep = task.sample(16, torch.Generator().manual_seed(1))
        pairs = torch.cat([ep.keys, ep.values], -1)
        query = torch.cat([ep.keys[torch.arange(16), ep.which], torch.zeros_like(ep.values[:, 0])], -1)
        out = torch.as_tensor(served.run_episodes(torch.cat([pairs, query[:, None]], 1).numpy()))
        with torch.no_grad():
            direct = served.model(task.inputs(ep))[0][:, -1, :pairs.shape[-1]]
        print("max-diff", float((out - direct).abs().max()))
        """)
    served = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**full, "PLASTICITY_PLUGINS": MODULE})
    assert served.returncode == 0, served.stderr[-3000:]
    assert float(served.stdout.split("max-diff")[1]) < 1e-4, served.stdout

    # Without its plugin, the checkpoint's task is named with the way to load it.
    unknown = plasticity("evaluate", str(folder / "checkpoint.pt"), cwd=tmp_path)
    assert unknown.returncode == 2
    assert "task 'recall'" in unknown.stderr and "--plugin MODULE" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_the_sweep_command_line_knows_a_plugin_task(tmp_path):
    env = {**on_path(EXAMPLE), "PLASTICITY_PLUGINS": MODULE}
    helped = plasticity("sweep", "--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "recall" in helped.stdout.split("--task", 1)[1].split("\n", 1)[0]
    missing = plasticity("sweep", "--task", "recall", "--no-tracking", "--storage", "sqlite:///x.db", "--preset",
                         "nosuch", cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "unknown recall preset 'nosuch'" in missing.stderr


BROKEN = {
    "import": ("import no_such_package_anywhere\n", "cannot be imported (ModuleNotFoundError: No module named "
               "'no_such_package_anywhere'): install no_such_package_anywhere"),
    "raises": ("raise RuntimeError('boom')\n", "failed while importing (RuntimeError: boom, at "),
    "syntax": ("def f(:\n", "failed while importing (SyntaxError: invalid syntax"),
    "no-method": ("""
        from dataclasses import dataclass
        from typing import Literal
        from plasticity.config import TaskConfig, register_config
        from plasticity.tasks import EpisodicTask, register_task

        @dataclass
        class HalfConfig(TaskConfig):
            task: Literal["half"] = "half"

        register_config(HalfConfig, {"default": {}})

        @register_task("half")
        class Half(EpisodicTask):
            def sample(self, batch, generator): ...
        """, "task 'half' does not define inputs, loss, metrics, figure"),
    "clash": ("""
        from plasticity.config import CONFIGS, register_config
        register_config(CONFIGS["images"], {"mine": {}})
        """, "it replaces the presets of task 'images', which is already registered"),
    "bad-rule": ("""
        from plasticity.rules import Elementwise, Rule, register
        from plasticity.rules.base import apply_elementwise

        def update(h, pre, post, eta, mod):
            return h + eta * pre * post

        def inverse(h_next, pre, post, eta, mod):
            return h_next - eta * pre * post

        def d_h(h, pre, post, eta, mod):
            return 1.0

        def d_pre(h, pre, post, eta, mod):
            return 2.0 * eta * post  # wrong: eta * post

        def d_post(h, pre, post, eta, mod):
            return eta * pre

        def d_eta(h, pre, post, eta, mod):
            return pre * post

        def mine(traces, pre, post, *, eta, clip=None, mod=None):
            return (apply_elementwise(update, traces[0], pre, post, eta),)

        register(Rule("mine", mine, elementwise=Elementwise(update=update, inverse=inverse, d_h=d_h, d_pre=d_pre,
                                                           d_post=d_post, d_eta=d_eta)))
        """, "rule 'mine': its elementwise form disagrees with itself"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, kind):
    body, says = BROKEN[kind]
    folder = write_plugin(tmp_path / "plugins", "broken_plugin", body)
    proc = plasticity("--plugin", "broken_plugin", "train", "patterns", "--help", cwd=tmp_path, env=on_path(folder))
    assert proc.returncode == 2, proc.stdout[-500:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plasticity: error: plugin broken_plugin (--plugin)"), lines
    assert says in lines[0], lines[0]


def test_a_broken_installed_plugin_warns_and_the_builtin_tasks_work(tmp_path):
    folder = write_plugin(tmp_path / "plugins", "broken_plugin", BROKEN["clash"][0])
    env = on_path(installed(tmp_path, "broken_plugin", "broken"), folder)
    proc = plasticity("train", "images", "--help", cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "--image-size" in proc.stdout
    warning = [ln for ln in proc.stderr.splitlines() if "broken_plugin" in ln]
    assert len(warning) == 1 and warning[0].startswith("plasticity: warning: plugin broken_plugin (entry point")
    # Taken back whole: the built-in images task keeps its own presets.
    assert "mine" not in proc.stdout
    listed = plasticity("plugins", cwd=tmp_path, env=env)
    assert "not loaded: plugin broken_plugin" in listed.stdout


def test_a_failed_plugin_is_taken_back_whole(tmp_path, monkeypatch):
    from plasticity import plugins
    from plasticity.config import CONFIGS, PRESETS
    from plasticity.rules import RULES
    from plasticity.tasks import TASKS

    write_plugin(tmp_path, "half_plugin", textwrap.dedent("""
        from plasticity.rules import HEBB, Rule, register
        register(Rule("half_rule", HEBB.update, elementwise=HEBB.elementwise))
        """) + textwrap.dedent(BROKEN["no-method"][0]))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = (dict(CONFIGS), dict(PRESETS), dict(TASKS), dict(RULES))
    with pytest.raises(plugins.PluginError, match="does not define inputs"):
        plugins.load("half_plugin", "--plugin")
    assert (dict(CONFIGS), dict(PRESETS), dict(TASKS), dict(RULES)) == before
    assert "half_plugin" not in plugins.LOADED and "half_plugin" not in sys.modules


def test_plugin_argument_errors(tmp_path):
    proc = plasticity("train", "patterns", "--plugin", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == ("plasticity: error: --plugin needs a module name: "
                                                            "--plugin mypackage.plugin")
