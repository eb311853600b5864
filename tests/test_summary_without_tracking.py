"""The sweep's summary with no MLflow (`--no-tracking`): what a trial's run would say
(its settings, size, episodes, the task's own metric) is read from the trial's folder in
Ray's results, so the table is whole and the best trial's `plasticity train` command is
printed. Real stores: an Optuna study in SQLite and trial folders as Ray and the
trainable write them."""

from __future__ import annotations

import json

import optuna
import pytest

from plasticity.config import preset
from tune.summary import collect, headline_of, show

pytest.importorskip("ray", reason="the sweep extra is not installed (pip install -e '.[sweep]')")


def test_no_tracking_summary_reads_the_trials_folders(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="nt", storage=storage)
    results = tmp_path / "ray_results" / "nt"
    for number, (eta, score, episodes) in enumerate([(0.05, 0.2, 512), (0.3, 0.1, 1024)]):
        study.add_trial(optuna.trial.create_trial(
            params={"eta": eta}, distributions={"eta": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)},
            value=score, user_attrs={"ray_trial_id": f"abc_{number:05d}"}))
        folder = results / f"train_trial_abc_{number:05d}"
        (folder / "run").mkdir(parents=True)
        cfg = preset("patterns", "small", eta=eta, rule="oja", episodes=1024, out=str(folder))
        (folder / "run" / "config.json").write_text(json.dumps(cfg.to_dict()))
        rows = [{"trial_id": f"abc_{number:05d}", "episodes": e, "objective": score + 0.1,
                 "model/params": 5331, f"best/{headline_of('patterns')}": 0.01 * (number + 1)} for e in (256, episodes)]
        rows[-1]["objective"] = score
        (folder / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    view = collect("nt", storage, None, results=str(results))
    assert [r.label for r in view.rows] == ["t001", "t000"]
    best = view.rows[0]
    assert (best.params, best.episodes, best.rule, best.headline) == ("5331", "1024", "oja", 0.02)
    text = show(view)
    command = text.split("train it again with:\n", 1)[1].splitlines()[0].strip()
    assert command.startswith("plasticity train patterns --preset small --rule oja --eta 0.3"), text
    assert "--out" not in command
