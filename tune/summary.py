"""The answer to a sweep, read from its stores (the Optuna study and the MLflow runs):
the top trials, the best trial as a `plasticity train` command, the registered model
and where to look. Printed at the end of a sweep and by `plasticity sweep show NAME`
(also while the sweep runs).

A trial's score is its best (lowest) evaluation of the sweep's metric (`objective`);
Optuna holds it as the trial's value (COMPLETE, or PRUNED for a trial ASHA stopped),
each MLflow child run as the metric `objective`, the registered model version as its
tag `score`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasticity.errors import ConfigError
from plasticity.redact import redact

HEADLINE = {"patterns": "eval/bit_error_erased", "images": "eval/erased_loss", "omniglot": "eval/accuracy",
            "maze": "eval/return"}
"""The metric a person reads first for each of the paper's tasks, shown beside the objective
(another task's: its `headline`, see `headline_of`)."""


def headline_of(task: str) -> str:
    """The metric shown beside the objective: the paper's tasks' in HEADLINE, a plugin
    task's its `headline` (plasticity.tasks.EpisodicTask); "" for none."""
    if task in HEADLINE:
        return HEADLINE[task]
    from plasticity.tasks import TASKS

    name = getattr(TASKS.get(task), "headline", None)
    return f"eval/{name}" if name else ""
STATES = {"COMPLETE": "completed", "PRUNED": "stopped early", "FAIL": "failed", "RUNNING": "running",
          "WAITING": "waiting"}
TOP = 10
"""Trials shown in the table (the best first)."""
NOT_FLAGS = {"task", "preset", "episodes_planned", "out"}
"""Logged params that are not `plasticity train` flags (or are given separately)."""


@dataclass
class Row:
    label: str
    trial_id: str
    objective: float = math.nan
    headline: float = math.nan
    eta: str = ""
    rule: str = ""
    alpha_mode: str = ""
    params: str = ""
    episodes: str = ""
    ended: str = ""
    run_id: str | None = None
    settings: dict[str, str] = field(default_factory=dict)


@dataclass
class SweepView:
    name: str
    task: str
    metric: str
    rows: list[Row]
    storage: str
    results: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    parent_status: str | None = None
    preset: str | None = None
    eval_every: str | None = None
    registered: str | None = None

    @property
    def best(self) -> Row | None:
        scored = [r for r in self.rows if math.isfinite(r.objective)]
        return min(scored, key=lambda r: r.objective) if scored else None


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def trial_label(trial_id: str) -> str:
    tail = trial_id.rsplit("_", 1)[-1]
    return f"t{int(tail):03d}" if tail.isdigit() else trial_id


def collect(name: str, storage: str, tracking_uri: str | None = None, experiment: str = "plasticity-sweeps",
            results: str | None = None) -> SweepView:
    """Read the sweep `name` from the Optuna storage and (if given) the MLflow store."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"no sweep {name!r} in the Optuna storage {redact(storage)}: check the name "
                          "(--storage, $OPTUNA_STORAGE)") from None
    runs, parent, exp_id = {}, None, None
    if tracking_uri is not None:
        from plasticity.tracking.mlflow import check_tracking

        client = check_tracking(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            exp_id = exp.experiment_id
            for run in sweep_runs(client, exp_id, name):
                if run.data.tags.get("role") == "sweep":
                    parent = run if parent is None or run.info.start_time > parent.info.start_time else parent
                elif "trial_id" in run.data.tags:
                    runs[run.data.tags["trial_id"]] = run
    # Without MLflow (--no-tracking), the trials' own folders say what their runs would.
    local = trial_folders(results) if not runs else {}
    params = parent.data.params if parent else {}
    task = (params.get("task") or next((r.data.params.get("task") for r in runs.values()), None)
            or next((f["config"].get("task") for f in local.values() if f["config"].get("task")), "patterns"))
    metric = params.get("metric") or next((r.data.tags.get("objective_metric") for r in runs.values()), "eval/loss")
    rows = []
    seen = set()
    for trial in study.trials:
        trial_id = trial.user_attrs.get("ray_trial_id", f"optuna_{trial.number:05d}")
        seen.add(trial_id)
        row = _row(trial_id, trial, runs.get(trial_id), task, client if runs else None)
        if trial_id in local:
            _from_folder(row, local[trial_id], task)
        rows.append(row)
    for trial_id, run in runs.items():  # a child run Optuna does not know (e.g. a resumed sweep's)
        if trial_id not in seen:
            rows.append(_row(trial_id, None, run, task, client))
    rows.sort(key=lambda r: (not math.isfinite(r.objective), r.objective if math.isfinite(r.objective) else 0,
                             r.label))
    return SweepView(name=name, task=task, metric=metric, rows=rows, storage=storage, results=results,
                     tracking_uri=tracking_uri, experiment_id=exp_id,
                     parent_run_id=parent.info.run_id if parent else None,
                     parent_status=parent.info.status if parent else None, preset=params.get("preset"),
                     eval_every=params.get("eval_every"), registered=parent.data.tags.get("best_model") if parent
                     else None)


def sweep_runs(client, experiment_id: str, name: str, page: int = 1000):
    """Every run of the sweep `name` (parent and children), a page of `page` at a time:
    one request per thousand trials, and none left out past a single page."""
    token = None
    while True:
        runs = client.search_runs([experiment_id], f"tags.sweep = '{name}'", max_results=page, page_token=token)
        yield from runs
        token = runs.token
        if not token:
            return


def _row(trial_id: str, trial, run, task: str, client) -> Row:
    row = Row(label=f"t{trial.number:03d}" if trial is not None else
              (run.data.tags.get("trial") if run is not None else None) or trial_label(trial_id), trial_id=trial_id)
    if trial is not None:
        state = trial.state.name
        row.ended = STATES.get(state, state.lower())
        if state in ("COMPLETE", "PRUNED") and trial.values:
            row.objective = float(trial.values[0])
        row.eta = f"{trial.params['eta']:.3g}" if "eta" in trial.params else ""
        row.rule = str(trial.params.get("rule", ""))
        row.alpha_mode = str(trial.params.get("alpha_mode", ""))
        if "stopped_at" in trial.user_attrs:
            row.episodes = str(trial.user_attrs["stopped_at"])
    if run is not None:
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        row.run_id, row.settings = run.info.run_id, dict(p)
        if not math.isfinite(row.objective) and row.ended != "failed":
            row.objective = _float(m.get("objective"))
        row.headline = _float(m.get(f"best/{headline_of(task)}"))
        row.eta = f"{_float(p['eta']):.3g}" if "eta" in p else row.eta
        row.rule, row.alpha_mode = p.get("rule", row.rule), p.get("alpha_mode", row.alpha_mode)
        row.params = f"{int(m['model/params'])}" if "model/params" in m else ""
        if "episodes_run" in m:
            row.episodes = str(int(m["episodes_run"]))
        elif client is not None:
            history = client.get_metric_history(run.info.run_id, "perf/elapsed_s")
            row.episodes = str(max(h.step for h in history)) if history else "0"
        ended = t.get("ended") or ("running" if run.info.status == "RUNNING" else row.ended)
        retries = t.get("retries")
        row.ended = f"{ended}, retried {retries}x" if retries and retries != "0" else ended
    return row


def trial_folders(results: str | None) -> dict[str, dict]:
    """`{trial_id: {"config": its run's config.json, "result": its last result}}` from a
    local Ray results folder (a sweep's trials each keep `result.json` and `run/`)."""
    found: dict[str, dict] = {}
    if not results or "://" in results or not Path(results).is_dir():
        return found
    for path in Path(results).glob("*/result.json"):
        last = None
        for line in path.read_text(errors="replace").splitlines():
            try:
                last = json.loads(line) if line.strip() else last
            except ValueError:
                break  # being written
        config = path.parent / "run" / "config.json"
        if last and "trial_id" in last:
            try:
                cfg = json.loads(config.read_text()) if config.is_file() else {}
            except ValueError:
                cfg = {}
            found[last["trial_id"]] = {"config": cfg if isinstance(cfg, dict) else {}, "result": last}
    return found


def _from_folder(row: Row, folder: dict, task: str) -> None:
    """What a trial's MLflow run would give its row, from its own folder instead."""
    cfg, result = folder["config"], folder["result"]
    row.settings = {k: str(v) for k, v in cfg.items() if k != "out"}
    row.headline = _float(result.get(f"best/{headline_of(task)}"))
    if "model/params" in result:
        row.params = str(int(result["model/params"]))
    if "episodes" in result:
        row.episodes = str(int(result["episodes"]))
    if not math.isfinite(row.objective) and row.ended != "failed":
        row.objective = _float(result.get("objective"))
    row.rule, row.alpha_mode = row.rule or str(cfg.get("rule", "")), row.alpha_mode or str(cfg.get("alpha_mode", ""))
    if not row.eta and isinstance(cfg.get("eta"), int | float):
        row.eta = f"{cfg['eta']:.3g}"


def _num(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4g}"


def table(view: SweepView, top: int = TOP) -> list[str]:
    headline = headline_of(view.task)
    head = ["trial", f"{view.metric} (best)", f"{headline} (at best)", "eta", "rule", "alpha", "params",
            "episodes", "ended"]
    body = [[r.label, _num(r.objective), _num(r.headline), r.eta or "-", r.rule or "-", r.alpha_mode or "-",
             r.params or "-", r.episodes or "-", r.ended or "-"] for r in view.rows[:top]]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [head, *body]]
    if len(view.rows) > top:
        lines.append(f"... and {len(view.rows) - top} more (all of them: the sweep's summary/trials.csv in MLflow)")
    return lines


def train_command(view: SweepView, row: Row) -> str | None:
    """`plasticity train TASK --preset P --flag value ...`: the best trial's settings, as
    flags where they differ from the preset."""
    if not row.settings:
        return None
    from plasticity.config import PRESETS, preset

    preset_name = row.settings.get("preset") or view.preset or next(iter(PRESETS[view.task]))
    base = {k: str(v) for k, v in preset(view.task, preset_name).to_dict().items()}
    flags = [f"plasticity train {view.task} --preset {preset_name}"]
    for key, value in row.settings.items():
        if key in NOT_FLAGS or key.startswith("use_") or key not in base or base[key] == value:
            continue
        flag = "--" + key.replace("_", "-")
        if value in ("True", "False"):
            flags.append(flag if value == "True" else f"--no-{key.replace('_', '-')}")
        else:
            flags.append(f"{flag} {_quote(value)}")
    if "episodes_planned" in row.settings:
        flags.append(f"--episodes {row.settings['episodes_planned']}")
    return " ".join(flags)


def _quote(value: str) -> str:
    return value if re.fullmatch(r"[\w.+\-/=:]+", value) else "'" + value.replace("'", "'\\''") + "'"


def ui_url(view: SweepView) -> tuple[str | None, str | None]:
    """(command that starts the UI or None for a server, URL of the parent run)."""
    if view.tracking_uri is None or view.parent_run_id is None:
        return None, None
    # MLflow 3's UI opens experiments in its GenAI view (traces, tokens) unless the URL
    # asks for the classic one; its own "Model training" switch is the same setting.
    path = f"#/experiments/{view.experiment_id}/runs/{view.parent_run_id}?workflowType=machine_learning"
    if view.tracking_uri.startswith(("http://", "https://")):
        return None, f"{view.tracking_uri.rstrip('/')}/{path}"
    return f"mlflow ui --backend-store-uri {view.tracking_uri}", f"http://127.0.0.1:5000/{path}"


def render(view: SweepView, registered_score: str | None = None) -> str:
    counts: dict[str, int] = {}
    for r in view.rows:
        key = r.ended.split(",")[0]
        counts[key] = counts.get(key, 0) + 1
    state = "" if view.parent_status in (None, "FINISHED") else f" [{view.parent_status.lower()}]"
    lines = [f"sweep {view.name}{state}: {len(view.rows)} trials (" +
             ", ".join(f"{v} {k}" for k, v in counts.items()) + f"); a trial's score: its best {view.metric}"]
    lines += ["  " + ln for ln in table(view)]
    best = view.best
    if best is not None:
        lines.append(f"best: {best.label}, {view.metric} {_num(best.objective)}; train it again with:")
        command = train_command(view, best)
        lines.append(f"  {command}" if command else "  (no MLflow run: settings are in the Optuna study)")
    if view.registered:
        lines.append(f"registered model: {view.registered}" + (f" ({registered_score})" if registered_score else ""))
    elif view.tracking_uri is not None:
        lines.append("registered model: none yet" + (" (the sweep is running)" if view.parent_status == "RUNNING"
                                                     else ""))
    command, url = ui_url(view)
    if url:
        # The tracking URI may carry a password (a server's user, a database store's).
        lines.append(redact(f"MLflow: {command + ' , then open ' if command else ''}{url}"))
    lines.append(f"Optuna: {redact(view.storage)} (study {view.name})")
    if view.results:
        lines.append(f"results: {view.results}")
    return "\n".join(lines)


def registered_score(tracking_uri: str | None, registered: str | None) -> str | None:
    """`eval/loss 0.0123, checkpoint at episode 6000, trial t003` from the version's tags."""
    if not tracking_uri or not registered or "/" not in registered:
        return None
    from mlflow.tracking import MlflowClient

    model, version = registered.rsplit("/", 1)
    try:
        tags = MlflowClient(tracking_uri).get_model_version(model, version).tags
    except Exception:  # noqa: BLE001 - the summary stays useful without it
        return None
    if "score" not in tags:
        return None
    return (f"{tags.get('metric', 'score')} {_num(_float(tags['score']))}, checkpoint at episode "
            f"{tags.get('checkpoint_episode', '?')}, trial {tags.get('trial', '?')}")


def show(view: SweepView) -> str:
    return render(view, registered_score(view.tracking_uri, view.registered))


def results_folder(storage_path: str, name: str) -> str | None:
    path = f"{storage_path.rstrip('/')}/{name}"
    return path if "://" in path or Path(path).exists() else None


def as_dict(view: SweepView) -> dict[str, Any]:
    """The rows as plain values (tests compare them with the stores)."""
    return {r.label: {"objective": r.objective, "ended": r.ended, "run_id": r.run_id, "trial_id": r.trial_id}
            for r in view.rows}
