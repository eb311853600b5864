"""Run a hyperparameter sweep: Ray Tune + Optuna (or random search), ASHA (or FIFO),
one MLflow parent run per sweep and one child run per trial; the best model is
registered in the MLflow Model Registry.

    python -m tune.sweep --task patterns --num-samples 8 --max-episodes 4000
    plasticity sweep --task patterns --smoke-test
    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m tune.sweep --task patterns --tracking-uri http://mlflow:5000 \
        --storage postgresql://user@db/optuna

With no address and no URIs, the sweep runs on a local Ray instance with Optuna and
MLflow in SQLite files in the working directory (`optuna.db`, `mlruns.db`).
Everything is checked (space, storage, tracking server, Ray address) before any
trial starts. Run it again with `--resume` after a crash: finished trials are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from plasticity.cliargs import parse_args
from plasticity.config import CONFIGS, PRESETS, SEARCH_SPACES
from plasticity.errors import ConfigError, PlasticityError, TrackingError, check_choice, check_positive, error_line
from plasticity.plugins import PluginError, command_line_plugins, load_command_line
from plasticity.plugins import specs as plugin_specs
from plasticity.redact import redact
from plasticity.train.signals import WarningSignal
from tune.spaces import SPACES, DefineByRun, check_constants, check_space_limits, load_space, validate_space
from tune.stores import (
    check_gpus,
    check_optuna_storage,
    connect_ray,
    default_storage,
    default_storage_path,
    fail,
    load_study,
)

OBJECTIVE = "objective"
"""The key under which trials report their score (see tune/trainable.py)."""


@dataclass
class SweepArgs:
    """Hyperparameter sweep over plasticity settings with Ray Tune + Optuna, tracked in MLflow."""

    task: str = "patterns"
    """Task to sweep, a registered one (plugins' tasks included); its search space is
    tune.spaces.SPACES[task] (a plugin's: the one it registered) unless --space is given."""
    preset: str = "small"
    """Task preset every trial starts from (see `plasticity train TASK --help`)."""
    fixed: list[str] = dataclasses.field(default_factory=list)
    """Config fields fixed for every trial, as KEY=VALUE (e.g. --fixed image_size=8 data_dir=/data);
    they override the preset, and the search space draws the rest."""
    num_samples: int = 8
    """Number of trials."""
    max_episodes: int = 8000
    """Training episodes of a trial that is never stopped early (ASHA's max_t)."""
    eval_every: int | None = None
    """Evaluate, report and checkpoint every this many episodes (default: max_episodes / 8)."""
    search: Literal["optuna", "random"] = "optuna"
    """Optuna TPE (default) or random search (Optuna's RandomSampler)."""
    scheduler: Literal["asha", "fifo"] = "asha"
    """ASHA early stopping (default) or FIFO (every trial runs to the end)."""
    grace_period: int | None = None
    """ASHA: episodes every trial runs before it can be stopped (default: 2 x --eval-every)."""
    reduction_factor: float = 2.0
    """ASHA: at each rung only the best 1/reduction_factor of the trials go on."""
    startup_trials: int = 10
    """TPE: trials drawn at random before TPE models the results (Optuna's n_startup_trials)."""
    multivariate: bool = True
    """TPE: model the parameters jointly (Optuna's multivariate TPE, its default for one
    objective); --no-multivariate models each on its own."""
    group: bool = False
    """TPE: model conditional parameters (those with `when` in the space) in their own
    groups (Optuna's group=True; needs --multivariate)."""
    metric: str = "eval/loss"
    """Objective reported by the trials (minimised)."""
    multi_objective: bool = False
    """Optimise the objective and the parameter count (model/params) together (Optuna
    multi-objective TPE); ASHA then stops on the objective alone."""
    space: str | None = None
    """YAML file with the search space (see tune/spaces.py); default: the built-in one."""
    max_concurrent: int = 2
    """Trials running at once (ConcurrencyLimiter)."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial."""
    gpus_per_trial: float = 0.0
    """GPUs reserved per trial; fractions (0.25) let several trials share one GPU."""
    max_failures: int = 2
    """Times a failed trial is retried from its last checkpoint (FailureConfig)."""
    address: str | None = None
    """Ray cluster address (e.g. ray://host:10001 or auto); default: $RAY_ADDRESS, else a private local Ray
    on 127.0.0.1 with token authentication ($PLASTICITY_BIND=0.0.0.0 or an address opens it to the network)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; when unset, $MLFLOW_TRACKING_URI or sqlite:///mlruns.db here."""
    no_tracking: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Do not log to MLflow."""
    experiment: str = "plasticity-sweeps"
    """MLflow experiment for the parent and child runs."""
    register_model: str | None = None
    """Register the best model under this name (default: plasticity-TASK)."""
    storage: str | None = None
    """Optuna storage URL (SQLite file or PostgreSQL); default $OPTUNA_STORAGE, else sqlite:///optuna.db here."""
    name: str | None = None
    """Sweep name: Ray experiment folder, Optuna study and MLflow parent run (default: TASK-TIME)."""
    storage_path: str | None = None
    """Folder (or URI on a cluster, e.g. s3://...) for Ray's trial results and checkpoints;
    default $PLASTICITY_STORAGE_PATH, else ray_results here."""
    resume: bool = False
    """Resume the sweep named --name (after a driver crash): finished trials are not rerun."""
    seed: int = 0
    """Seed of the searcher."""
    smoke_test: bool = False
    """A tiny sweep (4 trials x 1024 episodes) to check the setup end to end."""
    verbose: bool = False
    """Show Ray's, MLflow's and Optuna's own output on the terminal (default: one progress
    view; their logging goes to sweep.log in the results folder)."""
    warning_signal: WarningSignal = "USR1"
    """Signal that warns the driver its time is nearly up (Slurm: --signal=B:USR1@120): it stops
    the sweep as SIGTERM does (saved; go on with --resume) and exits 128 + its number (138 for USR1)."""


def default_space(task: str) -> dict:
    """The search space of `task` when no --space is given: the paper's tasks' in
    `tune.spaces.SPACES`, a plugin's the one it registered (`plasticity.config.register_space`)."""
    space = SPACES.get(task) or SEARCH_SPACES.get(task)
    if space is None:
        raise ConfigError(f"task {task!r} has no search space: pass --space FILE.yaml, or register one in its "
                          "plugin with plasticity.config.register_space")
    return space


def args_type() -> type[SweepArgs]:
    """SweepArgs with --task's choices read from the registry now (after the plugins
    loaded), for the command line and its --help."""
    return dataclasses.make_dataclass(
        "SweepArgs", [("task", Literal[tuple(CONFIGS)], dataclasses.field(default="patterns"))], bases=(SweepArgs,),
        namespace={"__doc__": SweepArgs.__doc__})


def parse_sweep_args(argv: list[str], prog: str) -> SweepArgs:
    parsed = parse_args(args_type(), argv, prog=prog)
    return SweepArgs(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(SweepArgs)})


def resolve(args: SweepArgs) -> SweepArgs:
    check_choice("task", args.task, CONFIGS)
    if args.smoke_test:
        args.num_samples, args.max_episodes = min(args.num_samples, 4), 1024
    if args.eval_every is None:
        args.eval_every = max(1, args.max_episodes // 8)
    for name in ("num_samples", "max_episodes", "eval_every", "max_concurrent", "cpus_per_trial"):
        check_positive(name, getattr(args, name))
    check_positive("gpus_per_trial", args.gpus_per_trial, allow_zero=True)
    check_positive("startup_trials", args.startup_trials)
    if args.grace_period is None:
        args.grace_period = min(2 * args.eval_every, args.max_episodes)
    check_positive("grace_period", args.grace_period)
    if args.grace_period > args.max_episodes:
        raise ConfigError(f"--grace-period {args.grace_period} is more than --max-episodes {args.max_episodes}: "
                          "pass a smaller grace period (ASHA could never stop a trial)")
    if args.group and not args.multivariate:
        raise ConfigError("--group needs the multivariate TPE: drop --no-multivariate")
    if not args.reduction_factor > 1:
        raise ConfigError(f"--reduction-factor must be above 1, got {args.reduction_factor:g}: e.g. 2 (keep half "
                          "the trials at each rung) or 3")
    check_positive("max_failures", args.max_failures, allow_zero=True)
    if args.preset not in PRESETS[args.task]:
        raise ConfigError(f"unknown {args.task} preset {args.preset!r}: choose one of {', '.join(PRESETS[args.task])}")
    args.name = args.name or f"{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    # On a cluster the nodes' environment names the shared stores (docker-compose.yml).
    args.storage = default_storage(args.storage)
    args.storage_path = default_storage_path(args.storage_path)
    args.register_model = args.register_model or f"plasticity-{args.task}"
    args.overrides = parse_fixed(args.fixed, args.task)
    return args


def parse_fixed(items: list[str], task: str) -> dict:
    """`["k=v", ...]` -> `{k: v}` with YAML scalars (numbers, booleans, null). A task that
    reads data gets an absolute `data_dir` (trials run in their own folders, maybe on
    other nodes): the one given, else $PLASTICITY_DATA, else ./data."""
    import yaml

    from plasticity.config import CONFIGS
    from plasticity.config.renames import upgrade_dict
    from plasticity.data import resolve_data_dir

    known = {f.name for f in dataclasses.fields(CONFIGS[task])} - {"task", "preset"}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--fixed takes KEY=VALUE, got {item!r}: e.g. --fixed image_size=16")
        try:
            out[key.replace("-", "_")] = yaml.safe_load(value) if value else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--fixed {item}: the value is not a YAML scalar ({error_line(e, limit=80)}): quote it "
                              "or pass a number, true/false or null") from None
    out = upgrade_dict(out)
    unknown = sorted(set(out) - known)
    if unknown:
        what = "fields" if len(unknown) > 1 else "field"
        raise ConfigError(f"--fixed names unknown {task} {what} {', '.join(unknown)}: choose from "
                          f"{', '.join(sorted(known))} (--task and --preset are options of their own)")
    if "data_dir" in known:
        out["data_dir"] = str(resolve_data_dir(out.get("data_dir")).resolve())
    return out


def build_kernels_first(args: SweepArgs) -> None:
    """Build the fused C++ kernels once, here, before any trial: the trials on this machine
    load them from the shared on-disk cache, so no trial's clock or speed includes the
    build. Where they cannot be built the trials run the torch-op kernels (said here)."""
    from plasticity.config import preset
    from plasticity.nn.fused import fused_rules, prepare

    cfg = preset(args.task, args.preset, **args.overrides)
    # Every fused rule: the trials may draw the rule.
    prepared = prepare(cfg, "cuda" if args.gpus_per_trial > 0 else "cpu", rules=fused_rules())
    if not prepared.rules:
        return
    if prepared.ok:
        print(f"fused C++ kernels ready ({prepared.seconds:.1f} s, before any trial)", flush=True)
    else:
        print("fused C++ kernels cannot be built here (no C++ compiler?): the trials run the slower torch-op "
              "kernels; install g++ (e.g. apt-get install g++) to build them", flush=True)


def make_searcher(args: SweepArgs, space: dict, storage):
    """Optuna behind Ray Tune: TPE (with --startup-trials, --multivariate, --group) or random
    search, seeded by --seed, its study named --name in `storage`."""
    import optuna

    from tune.search import SweepSearch

    with warnings.catch_warnings():
        # Optuna marks `group` experimental; chosen by measurement (README, search benchmark).
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = (optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=args.startup_trials,
                                              multivariate=args.multivariate, group=args.group)
                   if args.search == "optuna" else optuna.samplers.RandomSampler(seed=args.seed))
    # A trial's score is its best evaluation of the metric so far (`objective`, reported
    # by the trainable): Optuna, ASHA, the summary and the registered model all use it.
    metrics = [OBJECTIVE, "model/params"] if args.multi_objective else OBJECTIVE
    modes = ["min", "min"] if args.multi_objective else "min"
    return SweepSearch(DefineByRun(space, {}), metric=metrics, mode=modes, sampler=sampler,
                       study_name=args.name, storage=storage, max_t=args.max_episodes)


def make_scheduler(args: SweepArgs):
    """ASHA on the trials' score, over episodes (--grace-period, --reduction-factor), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if args.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="episodes", metric=OBJECTIVE, mode="min", max_t=args.max_episodes,
                         grace_period=args.grace_period, reduction_factor=args.reduction_factor)


def run_sweep(args: SweepArgs, stop=None):
    """Run the sweep `args` describes (checked first); print its progress and, at the end,
    its summary; return Ray Tune's ResultGrid (`run` returns the whole result)."""
    return sweep_and_collect(args, stop)[0]


def run(args: SweepArgs, stop=None):
    """Run the sweep `args` (checked and completed first: its name, its stores) and return
    its `tune.result.SweepResult`: what `plasticity sweep` runs once it has parsed its
    command line (`stop`: its signal handling), and `tune.api.sweep` once it has read its
    keywords."""
    from tune.result import result_of

    grid, view = sweep_and_collect(args, stop)
    return result_of(args, grid, view)


def sweep_and_collect(args: SweepArgs, stop=None):
    """Check everything, run the sweep, write the summary. Returns the ResultGrid.
    `stop`: the driver's signals (`tune.progress.StopOnSignals`, active), as `main` runs
    it: a signal raises `SweepStopped` once the sweep's state is saved."""
    from plasticity.tracking.mlflow import check_tracking, default_tracking_uri

    args = resolve(args)
    held = None
    if not args.verbose:
        from tune.progress import quiet_logging

        held = quiet_logging()
    given = args.space if isinstance(args.space, dict) else load_space(args.space) if args.space else None
    space = validate_space(given if given is not None else default_space(args.task), args.task)
    check_constants(args.task, args.preset, args.overrides)
    check_space_limits(space, args.task, args.preset, args.overrides)
    tracking_uri = None if args.no_tracking else (args.tracking_uri or default_tracking_uri())
    if tracking_uri is not None:
        check_tracking(tracking_uri)
    optuna_storage = check_optuna_storage(args.storage)
    build_kernels_first(args)
    said = io.StringIO()
    # Ray's start-up notices (it sets up its console logging while starting) go to the log.
    with (contextlib.redirect_stderr(said) if held is not None else contextlib.nullcontext(),
          stop.shielding_children() if stop is not None else contextlib.nullcontext()):
        connect_ray(args.address)
    if stop is not None:
        stop.take_back()
    check_gpus(args.gpus_per_trial)
    log_file = None
    if held is not None:
        from tune.progress import log_to_file

        # After Ray started (it gives its loggers handlers then), before any trial.
        local = "://" not in args.storage_path
        log_file = (Path(args.storage_path) / args.name if local else Path.cwd()) / f"sweep-{args.name}.log"
        log_to_file(held, log_file)
        for line in said.getvalue().strip().splitlines():
            logging.getLogger("ray").info(line)

    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from tune.progress import ProgressView
    from tune.report import SweepTracker, TrialCounter
    from tune.trainable import SweepContext, train_trial

    tracker = SweepTracker.open(tracking_uri, args.experiment, args.name, asdict(args)) if tracking_uri else None
    counter = tracker.callback(args.max_episodes) if tracker else TrialCounter()
    sweep = SweepContext(task=args.task, preset=args.preset, max_episodes=args.max_episodes, overrides=args.overrides,
                         eval_every=args.eval_every, tracking_uri=tracking_uri, experiment=args.experiment,
                         parent_run_id=tracker.run_id if tracker else None, sweep_name=args.name, metric=args.metric,
                         plugins=plugin_specs())
    trainable = tune.with_resources(tune.with_parameters(train_trial, sweep=sweep),
                                    {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})
    path = f"{args.storage_path.rstrip('/')}/{args.name}"
    if args.resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"no sweep to resume at {path}: check --name and --storage-path")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        searcher = ConcurrencyLimiter(make_searcher(args, space, optuna_storage), max_concurrent=args.max_concurrent)
        scheduler = make_scheduler(args)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=args.num_samples),
            run_config=tune.RunConfig(
                name=args.name, storage_path=args.storage_path, verbose=1 if args.verbose else 0,
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                # Every checkpoint is kept (one per evaluation, eval_every = max_episodes / 8 by
                # default): keeping fewer forces an experiment snapshot each time a trial has
                # written that many, which Ray warns about at every evaluation.
                checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=args.metric,
                                                        checkpoint_score_order="min"),
                callbacks=[counter]),
        )
    # Trials report `objective` from their first finite evaluation on, not before.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    progress = ProgressView(args.num_samples, args.max_episodes, args.metric)
    # Tuner.restore brings back the callbacks pickled by the first driver; use this
    # session's (its counts, its MLflow client). Tune has no public setter for this.
    tuner._local_tuner.get_run_config().callbacks = [counter, progress] + ([stop] if stop is not None else [])
    print(f"sweep {args.name}: {args.num_samples} trials of up to {args.max_episodes} episodes, "
          f"{args.max_concurrent} at a time" + (f"; logs in {log_file}" if log_file else ""), flush=True)
    try:
        results = tuner.fit()
    finally:
        progress.close()
    if stop is not None:
        stop.fit_returned()
        if stop.signum is not None:
            from tune.progress import SweepStopped

            if tracker is not None:
                tracker.parent.finish(status="KILLED", retries=1)
            raise SweepStopped(stop.signum)
    counts = counter.counts()
    if tracker is not None:
        tracker.summarise(results, args, sweep, counts, study=load_study(args.name, optuna_storage))
    from tune.summary import collect, results_folder, show

    view = collect(args.name, args.storage, tracking_uri, args.experiment,
                   results=results_folder(args.storage_path, args.name))
    answer = show(view)
    if tracker is not None:
        tracker.describe(view, answer)
    print(answer, flush=True)
    # This driver session's trial events (the cluster fault tests read this line).
    print(f"sweep {args.name}: trials " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    return results, view


def main(argv: list[str] | None = None, prog: str = "python -m tune.sweep") -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = load_command_line(argv)
    except PluginError as e:
        fail(str(e))
    if argv and argv[0] == "show":
        from tune.show import show_main

        return show_main(argv[1:], prog)
    args = parse_sweep_args(argv, prog)
    from plasticity.train.signals import SignalPlan
    from tune.progress import StopOnSignals, SweepStopped

    stop = StopOnSignals(SignalPlan(args.warning_signal))
    try:
        with stop.active():
            results = run(args, stop).grid
    except (PlasticityError, TrackingError) as e:
        fail(str(e))
    except SweepStopped as e:
        again = (f"continue with `{resume_line(prog, argv, args.name)}`" if e.resumable
                 else "nothing had run: to go on, run the same command again")
        print(f"plasticity sweep: {e}; {again}", file=sys.stderr, flush=True)
        return e.exit_code
    ok = [r for r in results if r.error is None]
    print(f"sweep {args.name}: {len(ok)}/{len(results)} trials finished without error")
    if len(results) and not ok:
        print(f"plasticity sweep: error: all {len(results)} trials failed; the first: "
              f"{first_error_line(results[0].error)}", file=sys.stderr)
        return 1
    return 0


def resume_line(prog: str, argv: list[str], name: str) -> str:
    """The command that continues a stopped sweep: the same one, with its --name and
    --resume (`Tuner.restore` keeps the finished trials), and the plugins given with
    --plugin. Passwords are masked."""
    plugins = [part for module in command_line_plugins() for part in ("--plugin", module)]
    parts = [*prog.split(), *plugins, *(redact(a) for a in argv if a != "--resume")]
    if not any(a == "--name" or a.startswith("--name=") for a in argv):
        parts += ["--name", name]
    return shlex.join([*parts, "--resume"])


def first_error_line(error: BaseException | None) -> str:
    """The line of a trial's error that says what went wrong (Ray wraps it in a traceback)."""
    lines = [ln.strip() for ln in str(error or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


if __name__ == "__main__":
    sys.exit(main())
