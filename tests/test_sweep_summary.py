"""The answer a sweep gives, checked against its stores: one real small sweep (local
Ray, Optuna and MLflow in SQLite) in which ASHA stops trials and one trial fails; its
end-of-sweep summary, `sweep show`, the Optuna states, the child runs' params, tags and
end times, the registered version's score, and how many lines it printed."""

from __future__ import annotations

import re

import pytest

from tests.test_sweep import _mlflow, sweep

# An input gain of 1e39 overflows float32 (a real NaN: the trial fails); 1e-6 hides the
# patterns, so the network learns nothing (ASHA stops it); 20 is the task's own. (Since eta
# is kept in range by construction, no learning rate makes the plastic network NaN.)
SPACE = """\
input_gain: {type: categorical, choices: [20.0, 1.0e-6, 1.0e+39]}
eta: {type: float, low: 0.01, high: 0.2, log: true}
alpha_mode: {type: categorical, choices: [free, shared]}
use_clip: {type: categorical, choices: [false, true]}
clip: {type: float, low: 0.5, high: 2.0, when: {use_clip: true}}
"""
# Random search with seed 15 draws input_gain 20, 1e39, 20, 1e-6 (one at a time): the last
# is stopped by ASHA at its first rung (64 episodes), the second fails.
ARGS = ["--task", "patterns", "--num-samples", "4", "--max-episodes", "128", "--eval-every", "32",
        "--max-concurrent", "1", "--max-failures", "0", "--search", "random", "--seed", "15", "--name", "answer",
        "--space", "space.yaml"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "space.yaml").write_text(SPACE)
    proc = sweep(ARGS, d)
    return d, proc


def _block(text: str) -> str:
    """The summary: from its `sweep answer:` header to its `results:` line."""
    start = text.index("sweep answer: 4 trials (")
    return text[start:text.index("\n", text.index("results: ", start))]


@pytest.mark.slow
def test_summary_matches_optuna_and_mlflow(finished_sweep):
    d, proc = finished_sweep
    assert proc.returncode == 0, proc.stderr[-4000:]
    import optuna

    study = optuna.load_study(study_name="answer", storage=f"sqlite:///{d / 'optuna.db'}")
    client = _mlflow(f"sqlite:///{d / 'mlruns.db'}")
    exp = client.get_experiment_by_name("plasticity-sweeps")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(study.trials) == 4 and len(children) == 4

    rows = {}
    for line in _block(proc.stdout).splitlines():
        cells = line.split()
        if cells and re.fullmatch(r"t\d{3}", cells[0]):
            rows[cells[0]] = cells
    assert len(rows) == 4, proc.stdout
    states = {}
    for trial in study.trials:
        child = children[trial.user_attrs["ray_trial_id"]]
        label = f"t{trial.number:03d}"
        cells = rows[label]
        states[label] = trial.state.name
        assert child.data.tags["trial"] == label and child.info.run_name.startswith(f"{label} eta=")
        episodes_run = int(child.data.metrics["episodes_run"])
        ended = child.data.tags["ended"]
        if trial.state == optuna.trial.TrialState.FAIL:
            assert ended == "failed" and child.info.status == "FAILED" and cells[1] == "-"
            assert trial.params["input_gain"] == 1e39
            continue
        # One score everywhere: Optuna's value == the child's `objective` == the table's.
        best_eval = min(m.value for m in client.get_metric_history(child.info.run_id, "eval/loss"))
        assert trial.value == pytest.approx(child.data.metrics["objective"], rel=1e-12)
        assert trial.value == pytest.approx(best_eval, rel=1e-12)
        assert cells[1] == f"{trial.value:.4g}"
        assert cells[2] == f"{child.data.metrics['best/eval/bit_error_erased']:.4g}"
        assert cells[7] == str(episodes_run)
        if trial.state == optuna.trial.TrialState.PRUNED:
            # ASHA stopped it: PRUNED with its last reported value, before its planned episodes.
            assert ended == "stopped early" and episodes_run < 128 and " ".join(cells[8:]) == "stopped early"
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert ended == "completed" and episodes_run == 128 and cells[8] == "completed"
    assert "PRUNED" in states.values() and "FAIL" in states.values() and "COMPLETE" in states.values(), states

    # The best trial, its command and its registered version.
    best = min((t for t in study.trials if t.value is not None and t.state.name != "FAIL"), key=lambda t: t.value)
    text = _block(proc.stdout)
    assert f"best: t{best.number:03d}, eval/loss {best.value:.4g}" in text
    command = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("plasticity train patterns"))
    assert f"--eta {best.params['eta']!r}" in command  # drawn, unlike the preset's
    assert "--episodes 128" in command
    name, version = parent.data.tags["best_model"].split("/")
    mv = client.get_model_version(name, version)
    assert float(mv.tags["score"]) == pytest.approx(best.value, rel=1e-5)
    assert mv.tags["trial"] == f"t{best.number:03d}" and int(mv.tags["checkpoint_episode"]) > 0
    assert f"checkpoint at episode {mv.tags['checkpoint_episode']}" in mv.description
    assert f"registered model: {name}/{version} (eval/loss {best.value:.4g}" in text
    # The classic (not GenAI) view of MLflow 3.17 UI, as checked in a browser (README).
    assert f"/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning" in text


@pytest.mark.slow
def test_sweep_show_prints_the_same_from_the_stores(finished_sweep):
    d, proc = finished_sweep
    shown = sweep(["show", "answer"], d, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert _block(shown.stdout) == _block(proc.stdout)
    missing = sweep(["show", "nope"], d, timeout=300)
    assert missing.returncode == 2 and "no sweep 'nope' in the Optuna storage" in missing.stderr


@pytest.mark.slow
def test_child_runs_log_what_applies_and_end_on_their_own(finished_sweep):
    d, proc = finished_sweep
    client = _mlflow(f"sqlite:///{d / 'mlruns.db'}")
    exp = client.get_experiment_by_name("plasticity-sweeps")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.start_time)
    for child in children:
        params, tags = child.data.params, child.data.tags
        # The plastic model has no LSTM layer; Ray's temp folder is not a setting.
        assert "hidden" not in params and "out" not in params and "episodes" not in params
        assert params["episodes_planned"] == "128" and params["use_clip"] in ("True", "False")
        assert (params["clip"] != "None") == (params["use_clip"] == "True")
        assert {"eta", "rule", "alpha_mode", "objective_metric"} <= set(tags)
    # Trials ran one at a time: each run ended before (or as) the next started, not at the sweep's end.
    ends = [c.info.end_time for c in children]
    assert len(set(ends)) == len(ends)
    for before, after in zip(children, children[1:], strict=False):
        assert before.info.end_time <= after.info.start_time + 5000
    assert max(ends) < parent.info.end_time


@pytest.mark.slow
def test_default_output_is_short(finished_sweep):
    d, proc = finished_sweep
    lines = (proc.stdout + proc.stderr).count("\n")
    assert lines < 40, proc.stdout + proc.stderr
    assert "Experiment state snapshotting" not in proc.stderr and "Traceback" not in proc.stdout
    log = d / "ray_results" / "answer" / "sweep-answer.log"
    assert log.is_file() and log.stat().st_size > 0
