"""Ray Tune's OptunaSearch with the trial states Optuna should hold.

Ray's searcher tells Optuna COMPLETE for every trial that reported a value, also for a
trial ASHA stopped early and for one that failed after reporting. Here:

- a trial that ran its planned episodes: COMPLETE with its score (`objective`: the best
  evaluation of the sweep's metric);
- a trial stopped before them (ASHA): PRUNED, with its last reported intermediate
  value (for `objective`, its best so far);
- a trial that failed for good: FAIL.

A trial the study already holds as finished is told nothing more: a driver killed after
telling Optuna a trial's end, and before Ray Tune saved its experiment state (at most every
10 s), resumes that trial with `--resume`, and it ends a second time. The study keeps what
it was told first.

Each Optuna trial carries its Ray trial id (user attribute `ray_trial_id`), which joins
the study with the MLflow child runs (tag `trial_id`).
"""

from __future__ import annotations

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

TRIAL_NUMBER = "trial_number"
"""Config key carrying the Optuna trial's number to the trainable (not a config field)."""


class SweepSearch(OptunaSearch):
    def __init__(self, *args, max_t: int, time_attr: str = "episodes", **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t, self.time_attr = max_t, time_attr
        # Trials whose stored state this driver session has read and found unfinished.
        self._read_unfinished: set[str] = set()

    # What an earlier driver session read is stale for a resumed one (it may have told the
    # study after its last snapshot): a restored searcher reads each trial's state again.
    def __setstate__(self, state):
        self.__dict__.update(state)
        self._read_unfinished = set()

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        self._read_unfinished = set()

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and isinstance(config, dict):
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            # The trial's number in the study names it everywhere (t003): runs, table, progress.
            config = {**config, TRIAL_NUMBER: ot_trial.number}
        return config

    def told_already(self, trial_id: str) -> bool:
        """Whether the study holds this trial as finished (read from the storage, not from
        the Trial object's cache, which a resumed driver unpickled from an older state).
        The storage is read once per trial and driver session: after that only this
        driver tells the study about it (and notes it in `_completed_trials`), so one read
        per trial instead of one per result (benchmarks/bench_scale.py)."""
        if trial_id in self._completed_trials:
            return True
        if trial_id in self._read_unfinished:
            return False
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return False
        if not ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._read_unfinished.add(trial_id)
            return False
        self._completed_trials.add(trial_id)
        return True

    def on_trial_result(self, trial_id: str, result: dict):
        # A trial reports its score only once it has a finite evaluation (Optuna keeps no
        # intermediate values for several objectives: Ray's searcher drops them).
        if not isinstance(self.metric, list) and self.metric in result and not self.told_already(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self._ot_trials or self.told_already(trial_id):
            return
        from optuna.trial import TrialState

        ot_trial = self._ot_trials[trial_id]
        stopped_early = bool(result) and result.get(self.time_attr, 0) < self.max_t
        if error:
            state, values = TrialState.FAIL, None
        elif stopped_early and not isinstance(self.metric, list):
            # Optuna takes the last intermediate value. The result at which the scheduler
            # stopped the trial comes here, not through on_trial_result: report it first.
            if result.get(self.metric) is not None:
                ot_trial.report(result[self.metric], result[TRAINING_ITERATION])
            state, values = TrialState.PRUNED, None
        else:
            values = ([result.get(m) for m in self.metric] if isinstance(self.metric, list)
                      else result.get(self.metric)) if result else None
            state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        if stopped_early:
            ot_trial.set_user_attr("stopped_at", result.get(self.time_attr))
        self._ot_study.tell(ot_trial, values, state=state)
        self._completed_trials.add(trial_id)
