"""Benchmark: how the sweep driver's cost grows with the number of trials.

Runs one real sweep in this process (`tune.sweep.run_sweep`: local Ray, Optuna TPE
multivariate on SQLite or --storage, a real `mlflow server` on a free loopback port) with
trials so short that the driver, not training, is what is measured, and prints:

- driver CPU seconds and peak RSS (this process), per trial; Ray's GCS and raylet CPU;
- the time Optuna takes to suggest a trial as the study grows (SweepSearch.suggest,
  median of the calls around trial 10, 100, 500, 1000);
- Optuna writes (SQL INSERT/UPDATE/DELETE statements, all from the driver) and reads
  (SELECT) per trial; MLflow server requests per trial and per second, by kind;
- the end of the sweep: the parent run's summary (`SweepTracker.summarise`: models,
  table, plot) and the printed answer (`tune.summary.collect` + `show`).

    python benchmarks/bench_scale.py --trials 100
    python benchmarks/bench_scale.py --trials 1000 --max-concurrent 16 --json scale-1000.json
    python benchmarks/bench_scale.py --smoke-test          # 8 trials, the test's run

Table of a run on the 2-core development machine: docs/capacity.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SUGGEST_AT = (10, 100, 500, 1000)
# MLflow REST calls in the server's access log: `"POST /api/2.0/mlflow/runs/log-batch HTTP/1.1" 200`.
REQUEST = re.compile(r'"(GET|POST|PATCH|DELETE|PUT) (/(?:ajax-)?api/[^ ?"]+)')
TICKS = os.sysconf("SC_CLK_TCK")


def start_server(workdir: Path) -> tuple:
    """`mlflow server` on a free loopback port, once it answers an API call (on a loaded
    machine it listens well before it can answer)."""
    from mlflow.tracking import MlflowClient

    from tests.servers import start_mlflow_server

    server, uri = start_mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow-server.db'}")
    deadline = time.monotonic() + 180
    while True:
        try:
            MlflowClient(uri).search_experiments(max_results=1)
            return server, uri
        except Exception:  # noqa: BLE001 - not ready yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def ray_cpu() -> dict[str, float]:
    """CPU seconds of this process's Ray daemons (gcs_server, raylet), by name."""
    out: Counter = Counter()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            name = text[text.index("(") + 1:text.rindex(")")]
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and name in ("gcs_server", "raylet"):
                out[name] += _proc_cpu(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return dict(out)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Timer:
    """Wraps `owner.name` and records the seconds of every call."""

    def __init__(self, owner, name: str):
        self.calls: list[float] = []
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.calls.append(time.perf_counter() - t)

        setattr(owner, name, timed)

    @property
    def total(self) -> float:
        return sum(self.calls)


def count_sql() -> Counter:
    """SQL statements this process sends (the Optuna storage: the driver is its only user)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts: Counter = Counter()

    @event.listens_for(Engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany):
        counts[statement.lstrip().split(None, 1)[0].upper()] += 1

    return counts


def mlflow_requests(log: Path) -> Counter:
    counts: Counter = Counter()
    for line in log.read_text(errors="replace").splitlines():
        m = REQUEST.search(line)
        if m:
            counts[f"{m[1]} {m[2].split('/mlflow/', 1)[-1]}"] += 1
    return counts


def around(calls: list[float], k: int, width: int = 5) -> float | None:
    """Median seconds of the suggest calls around the k-th (1-based); None if too few."""
    if len(calls) < k:
        return None
    return statistics.median(calls[max(0, k - 1 - width):k + width])


def run(trials: int, max_concurrent: int, cpus_per_trial: float, episodes: int, storage: str | None,
        workdir: Path) -> dict:
    import tune  # noqa: F401 -- its environment defaults (telemetry) before mlflow is imported
    from tests.servers import stop

    os.chdir(workdir)
    server, uri = start_server(workdir)
    try:
        import tune.report
        import tune.search
        import tune.summary
        from tune.sweep import SweepArgs, run_sweep

        suggest = Timer(tune.search.SweepSearch, "suggest")
        summarise = Timer(tune.report.SweepTracker, "summarise")
        collect = Timer(tune.summary, "collect")
        show = Timer(tune.summary, "show")
        child_run = Timer(tune.report.SweepTracker, "child_run")
        sql = count_sql()
        args = SweepArgs(task="patterns", preset="small", num_samples=trials, max_episodes=episodes,
                         eval_every=max(1, episodes // 2), scheduler="fifo", max_concurrent=max_concurrent,
                         cpus_per_trial=cpus_per_trial, tracking_uri=uri, name="scale", max_failures=0,
                         storage=storage or f"sqlite:///{workdir / 'optuna.db'}",
                         fixed=["eval_episodes=4", "batch_size=2"])
        rss0, cpu0 = rss_mb(), time.process_time()
        start = time.monotonic()
        results = run_sweep(args)
        wall = time.monotonic() - start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        driver_cpu = time.process_time() - cpu0
        daemons = ray_cpu()
        ok = sum(r.error is None for r in results)
    finally:
        stop(server)
    requests = mlflow_requests(workdir / "mlflow.log")
    writes = sum(v for k, v in sql.items() if k in ("INSERT", "UPDATE", "DELETE"))
    return {
        "trials": trials, "ok": ok, "max_concurrent": max_concurrent, "episodes": episodes, "wall_s": wall,
        "driver_cpu_s": driver_cpu, "peak_rss_mb": usage.ru_maxrss / 1024, "rss_before_mb": rss0,
        "gcs_cpu_s": daemons.get("gcs_server", 0.0), "raylet_cpu_s": daemons.get("raylet", 0.0),
        "suggest_s": {k: around(suggest.calls, k) for k in SUGGEST_AT if k <= trials},
        "suggest_total_s": suggest.total, "child_run_calls": len(child_run.calls), "child_run_s": child_run.total,
        "optuna_writes": writes, "optuna_reads": sql.get("SELECT", 0),
        "mlflow_requests": sum(requests.values()), "mlflow_by_kind": dict(requests.most_common(12)),
        "summarise_s": summarise.total, "collect_s": collect.total, "show_s": show.total,
    }


def components(sizes: list[int], workdir: Path, storage: str | None = None, tries: int = 5) -> list[dict]:
    """The driver's per-trial parts at study sizes up to 1,000s without running trials:
    TPE's suggest (the sweep's space and sampler settings) at each size, the lookup of a
    trial's MLflow run by tag search (the old way) and by id, and the summary
    (`collect` + `show`) over that many trials and runs, on a real `mlflow server`."""
    import optuna
    from mlflow.entities import Metric

    import tune  # noqa: F401 -- telemetry defaults first
    from tests.servers import stop
    from tune.report import SweepTracker
    from tune.spaces import SPACES, DefineByRun, validate_space
    from tune.summary import collect, show
    from tune.sweep import SweepArgs, make_searcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.chdir(workdir)
    storage = storage or f"sqlite:///{workdir / 'optuna.db'}"
    space = DefineByRun(validate_space(SPACES["patterns"], "patterns"), {})
    args = SweepArgs(name="scale")
    tpe = make_searcher(args, {}, None)._sampler  # the sweep's sampler settings (TPE multivariate)
    filler = optuna.create_study(study_name="scale", storage=storage, sampler=optuna.samplers.RandomSampler(0))
    study = optuna.load_study(study_name="scale", storage=storage, sampler=tpe)
    server, uri = start_server(workdir)
    rows = []
    try:
        from plasticity.tracking.mlflow import MlflowTracker

        parent = MlflowTracker.open(uri, "scale", "scale", {"task": "patterns", "metric": "eval/loss"},
                                    tags={"sweep": "scale", "role": "sweep"})
        tracker = SweepTracker(parent, parent.client.get_run(parent.run_id).info.experiment_id, "scale")
        from mlflow.tracking import MlflowClient

        # Filled straight into the server's database (fast); every measured read goes
        # through the server.
        client, done, ids = MlflowClient(f"sqlite:///{workdir / 'mlflow-server.db'}"), 0, []
        for size in sorted(sizes):
            for _ in range(size - done):  # random trials, as many MLflow child runs
                trial = filler.ask()
                space(trial)
                trial.set_user_attr("ray_trial_id", f"r{trial.number:05d}")
                value = float(np.random.default_rng(trial.number).uniform(0.1, 1.0))
                filler.tell(trial, value)
                run = client.create_run(tracker.experiment_id, run_name=f"t{trial.number:03d}", tags={
                    "sweep": "scale", "trial_id": f"r{trial.number:05d}", "mlflow.parentRunId": parent.run_id})
                client.log_batch(run.info.run_id, metrics=[Metric("objective", value, 0, 4),
                                                           Metric("episodes_run", 4, 0, 4)])
                ids.append(run.info.run_id)
            done = size
            suggest = []
            for _ in range(tries):
                t = time.perf_counter()
                trial = study.ask()
                space(trial)
                suggest.append(time.perf_counter() - t)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)  # not a completed trial: sizes stay
            probe = f"r{size // 2:05d}"
            t = time.perf_counter()
            for _ in range(tries):
                tracker.child_run(probe)
            search_s = (time.perf_counter() - t) / tries
            t = time.perf_counter()
            for _ in range(tries):
                tracker.child_run(probe, ids[size // 2])
            get_s = (time.perf_counter() - t) / tries
            t = time.perf_counter()
            view = collect("scale", storage, uri, "scale")
            collect_s = time.perf_counter() - t
            t = time.perf_counter()
            show(view)
            rows.append({"trials": size, "suggest_s": statistics.median(suggest), "search_run_s": search_s,
                         "get_run_s": get_s, "collect_s": collect_s, "show_s": time.perf_counter() - t,
                         "rows": len(view.rows)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop(server)
    return rows


def components_table(rows: list[dict]) -> str:
    head = ["trials in study", "TPE suggest ms", "run by tag search ms", "run by id ms", "collect s", "show s"]
    body = [[str(r["trials"]), f"{1000 * r['suggest_s']:.0f}", f"{1000 * r['search_run_s']:.0f}",
             f"{1000 * r['get_run_s']:.0f}", f"{r['collect_s']:.2f}", f"{r['show_s']:.2f}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *body])


def table(rows: list[dict]) -> str:
    head = ["trials", "ok", "wall s", "driver cpu s", "cpu/trial", "peak rss MB", "rss/trial MB", "gcs cpu s",
            *[f"suggest@{k} ms" for k in SUGGEST_AT], "optuna w/trial", "optuna r/trial", "mlflow req/trial",
            "mlflow req/s", "summarise s", "collect+show s"]
    body = []
    for r in rows:
        n = r["trials"]
        suggest = [f"{1000 * r['suggest_s'][str(k)]:.0f}" if r["suggest_s"].get(str(k)) is not None else "-"
                   for k in SUGGEST_AT]
        body.append([str(n), str(r["ok"]), f"{r['wall_s']:.0f}", f"{r['driver_cpu_s']:.0f}",
                     f"{r['driver_cpu_s'] / n:.3f}", f"{r['peak_rss_mb']:.0f}",
                     f"{(r['peak_rss_mb'] - r['rss_before_mb']) / n:.2f}", f"{r['gcs_cpu_s']:.0f}", *suggest,
                     f"{r['optuna_writes'] / n:.1f}", f"{r['optuna_reads'] / n:.1f}",
                     f"{r['mlflow_requests'] / n:.1f}", f"{r['mlflow_requests'] / r['wall_s']:.1f}",
                     f"{r['summarise_s']:.1f}", f"{r['collect_s'] + r['show_s']:.1f}"])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *body])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100, help="trials in the sweep")
    p.add_argument("--max-concurrent", type=int, default=16, help="trials at once")
    p.add_argument("--cpus-per-trial", type=float, default=0.1, help="Ray CPUs per trial (fractions pack many)")
    p.add_argument("--episodes", type=int, default=4, help="episodes per trial (two reports)")
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite in the work folder)")
    p.add_argument("--json", type=Path, help="add this run's row to a JSON file (and print all its rows)")
    p.add_argument("--smoke-test", action="store_true", help="8 trials, 4 at a time: the test's run")
    p.add_argument("--components", type=int, nargs="+", metavar="N",
                   help="measure the driver's parts at these study sizes (no trials run), e.g. 10 100 500 1000")
    args = p.parse_args(argv)
    # `timeout` stops it with SIGTERM: still stop the MLflow server (its `finally`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke_test:
        args.trials, args.max_concurrent = 8, 4
    if args.components:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
            print(components_table(components(args.components, Path(d), args.storage)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        row = json.loads(json.dumps(run(args.trials, args.max_concurrent, args.cpus_per_trial, args.episodes,
                                        args.storage, Path(d))))
    rows = [row]
    if args.json:
        rows = (json.loads(args.json.read_text()) if args.json.is_file() else []) + [row]
        args.json.write_text(json.dumps(rows, indent=1))
    print(json.dumps(row))
    print(table(rows))
    return 0 if row["ok"] == row["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
