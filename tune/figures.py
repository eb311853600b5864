"""The sweep's figures, drawn by Optuna's own matplotlib visualisations from the sweep's
study: the optimisation history, the parameters' importances, and the objective against
each searched parameter (eta first, then the learning rates, sizes, the rule, ...).

`study_figures(study, metric)` returns `{file name: matplotlib figure}`; the parent MLflow
run logs them at the top of its artifacts, where one click on the run's Artifacts tab
shows each (docs/sweeps.md).
"""

from __future__ import annotations

import warnings
from typing import Any

# The searched parameters drawn first, in this order; the others follow in the study's.
FIRST = ("eta", "lr", "eta_lr", "rule", "model")


def slice_params(study) -> list[str]:
    """The study's parameters that a finished trial drew, `FIRST` ones first."""
    from optuna.trial import TrialState

    seen: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        seen.update(dict.fromkeys(t.params))
    return [p for p in FIRST if p in seen] + [p for p in seen if p not in FIRST]


def scored(study):
    """A copy of the study (in memory) where every trial with a score counts as finished:
    the sweep's stopped-early trials (ASHA; PRUNED in the study, with their best score
    told) are in its table, and Optuna's plots would leave them out."""
    import optuna
    from optuna.trial import TrialState

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    try:
        copy = optuna.create_study(directions=study.directions, storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in study.get_trials(deepcopy=True, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.values is not None:
            t.state = TrialState.COMPLETE
            copy.add_trial(t)
    return copy


def _figure(drawn: Any):
    """The figure of what an Optuna matplotlib plot returns (one Axes, or an array of them)."""
    first = drawn.flat[0] if hasattr(drawn, "flat") else drawn
    return first.figure


def study_figures(study, metric: str) -> dict[str, Any]:
    """`{name.png: figure}` for the study's finished trials; empty with none. A figure
    Optuna cannot draw (e.g. importances with a single parameter, or fewer than two
    finished trials) is left out, not an error: the sweep's answer does not depend on it."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    study = scored(study)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:
        return {}
    # A multi-objective study (--multi-objective) is drawn on its first objective, the metric.
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    kw = {"target": target, "target_name": metric}
    plots = {"optimization_history.png": lambda: ovm.plot_optimization_history(study, **kw)}
    params = slice_params(study)
    if len(params) > 1 and len(finished) > 1:
        plots["param_importances.png"] = lambda: ovm.plot_param_importances(study, **kw)
    for p in params:
        plots[f"objective_vs_{p}.png"] = lambda p=p: ovm.plot_slice(study, params=[p], **kw)
    figures = {}
    with warnings.catch_warnings():
        # Optuna marks its matplotlib plots experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            try:
                fig = _figure(plot())
            except (ValueError, RuntimeError, ImportError):
                continue
            if name.startswith("objective_vs_"):
                fig.axes[0].set_title(f"{metric} (each trial's best) against {name[13:-4]}")
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            figures[name] = fig
    return figures
