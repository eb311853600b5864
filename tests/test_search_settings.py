"""The search's own settings (--startup-trials, --multivariate, --group, --grace-period,
--reduction-factor) reach Optuna's sampler and Ray's ASHA, and bad values are refused."""

from __future__ import annotations

import optuna
import pytest

from plasticity.errors import ConfigError
from tune.spaces import SPACES
from tune.sweep import SweepArgs, make_scheduler, make_searcher, resolve


def resolved(**kw) -> SweepArgs:
    return resolve(SweepArgs(task="patterns", name="t", storage="sqlite:///:memory:", **kw))


def test_tpe_settings_reach_the_sampler():
    args = resolved(startup_trials=4, group=True, seed=7)
    searcher = make_searcher(args, SPACES["patterns"], optuna.storages.InMemoryStorage())
    sampler = searcher._sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 4 and sampler._multivariate is True and sampler._group is True
    independent = make_searcher(resolved(multivariate=False), SPACES["patterns"], optuna.storages.InMemoryStorage())
    assert independent._sampler._multivariate is False and independent._sampler._group is False
    random = make_searcher(resolved(search="random"), SPACES["patterns"], optuna.storages.InMemoryStorage())
    assert isinstance(random._sampler, optuna.samplers.RandomSampler)


def test_asha_settings_reach_the_scheduler():
    args = resolved(max_episodes=9000, grace_period=1000, reduction_factor=3)
    asha = make_scheduler(args)
    assert asha._max_t == 9000 and asha._reduction_factor == 3
    # Rungs from the grace period up by the reduction factor (Ray keeps them as (milestone, results)).
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == [1000, 3000, 9000]
    default = resolved(max_episodes=8000)
    assert default.grace_period == 2 * default.eval_every == 2000
    assert type(make_scheduler(resolved(scheduler="fifo"))).__name__ == "FIFOScheduler"


@pytest.mark.parametrize("kw,message", [
    (dict(max_episodes=1000, grace_period=2000), "--grace-period 2000 is more than --max-episodes 1000"),
    (dict(grace_period=0), "grace_period must be > 0"),
    (dict(reduction_factor=1.0), "--reduction-factor must be above 1"),
    (dict(startup_trials=0), "startup_trials must be > 0"),
    (dict(multivariate=False, group=True), "--group needs the multivariate TPE"),
])
def test_bad_search_settings_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolved(**kw)


def test_a_resumed_driver_tells_optuna_nothing_more_about_a_finished_trial(tmp_path):
    """A driver killed after telling Optuna a trial's end and before Ray Tune saved its state
    (CI saw it on the cluster) resumes from an older searcher state and ends that trial again:
    Optuna refuses a second `tell` ("Cannot tell a COMPLETE trial") and the sweep died. The
    study keeps what it was told first; trials still open go on as before."""
    from tune.spaces import validate_space
    from tune.sweep import OBJECTIVE

    space = validate_space(SPACES["patterns"], "patterns")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = resolved(max_episodes=1000)
    searcher = make_searcher(args, space, optuna.storages.RDBStorage(url))
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray's last save before the kill
    searcher.on_trial_result("a", {OBJECTIVE: 0.5, "training_iteration": 1, "episodes": 500})
    searcher.on_trial_complete("a", {OBJECTIVE: 0.25, "training_iteration": 2, "episodes": 1000})

    resumed = make_searcher(args, space, optuna.storages.RDBStorage(url))
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("a", {OBJECTIVE: 0.4, "training_iteration": 2, "episodes": 1000})
    resumed.on_trial_complete("a", {OBJECTIVE: 0.125, "training_iteration": 2, "episodes": 1000})
    resumed.on_trial_result("b", {OBJECTIVE: 0.75, "training_iteration": 1, "episodes": 500})
    resumed.on_trial_complete("b", {OBJECTIVE: 0.5, "training_iteration": 2, "episodes": 1000})

    trials = optuna.load_study(study_name="t", storage=url).trials
    assert [(t.state, t.value, t.intermediate_values) for t in trials] == [
        (optuna.trial.TrialState.COMPLETE, 0.25, {1: 0.5}),
        (optuna.trial.TrialState.COMPLETE, 0.5, {1: 0.75}),
    ]
