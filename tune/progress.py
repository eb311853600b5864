"""What a sweep shows while it runs: one progress view, and everything else in a log file.

By default Ray's and MLflow's own logging (and Python warnings) go to `sweep.log` in the
sweep's results folder, and the terminal gets one progress line that updates in place
(a tqdm bar on a terminal; one line per finished trial when the output is a file).
`--verbose` leaves all of them on the terminal, as Ray and MLflow print them.

And how a sweep ends when it is told to stop (`StopOnSignals`): SIGTERM, SIGINT, SIGHUP
and the scheduler's warning signal end it the way Tune ends it on Ctrl-C, with one line.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ray.tune import Callback

from plasticity.train.signals import SignalPlan, Stopped, handling_signals, signal_name

QUIET_LOGGERS = ("ray", "mlflow", "alembic", "optuna", "py.warnings", "urllib3", "filelock", "matplotlib")


def quiet_logging() -> logging.handlers.MemoryHandler:
    """Take the libraries' logging and Python warnings off the terminal. They are held in
    memory until `log_to_file` names the file (the results folder exists only once the
    sweep's checks have passed)."""
    import os

    # Ray's newer console output prints a configuration box and paths even at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # MLflow prints `View run ... at: URL` to stdout (not logging) for each run it ends on a
    # tracking server; tune/report.py writes those links to the log file instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Import them first: each sets up its own console handler when imported.
    import mlflow  # noqa: F401
    import ray  # noqa: F401
    import ray.tune  # noqa: F401
    held = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    logging.captureWarnings(True)
    _route(held)
    try:
        import optuna

        optuna.logging.disable_default_handler()
    except ImportError:
        pass
    return held


def log_to_file(held: logging.handlers.MemoryHandler, log_file: Path) -> None:
    """Write what was held, and everything after, to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    held.setTarget(handler)
    held.flush()
    _route(handler)


def _route(handler: logging.Handler) -> None:
    """Make `handler` the only one of every library logger (and its children: Ray gives
    some of them their own, e.g. when it starts)."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in QUIET_LOGGERS]
    for name in {*QUIET_LOGGERS, *names}:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        if name in QUIET_LOGGERS:
            logger.addHandler(handler)
            logger.propagate = False
        else:
            logger.propagate = True


class ProgressView(Callback):
    """Trials done / running / stopped early / failed, the best score so far, elapsed time."""

    def __init__(self, total: int, max_episodes: int, metric: str, stream=None):
        self.total, self.max_episodes, self.metric = total, max_episodes, metric
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.running: set[str] = set()
        self.done = self.stopped = self.failed = 0
        self.best, self.best_trial = math.inf, ""
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=self.stream, unit="trial", dynamic_ncols=True, leave=True)

    def _line(self) -> str:
        best = f"best {self.metric} {self.best:.4g} ({self.best_trial})" if math.isfinite(self.best) else "no score yet"
        return (f"{self.done}/{self.total} trials done ({self.stopped} stopped early, {self.failed} failed), "
                f"{len(self.running)} running; {best}")

    def _show(self, finished: bool) -> None:
        if self.bar is not None:
            self.bar.set_description_str(self._line(), refresh=False)
            self.bar.n = self.done
            self.bar.refresh()
        elif finished:
            elapsed = int(time.monotonic() - self.start)
            print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {self._line()}", file=self.stream, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._show(False)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get("objective", math.inf)
        if value < self.best:
            self.best, self.best_trial = value, _name(trial)
        self._show(False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        if int((trial.last_result or {}).get("episodes", 0)) < self.max_episodes:
            self.stopped += 1
        self._show(True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        self.failed += 1
        message = f"{_name(trial)} failed: {_error_line(trial)}"
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)
        self._show(True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _name(trial) -> str:
    number = (trial.config or {}).get("trial_number")
    return f"t{number:03d}" if isinstance(number, int) else trial.trial_id


def _error_line(trial) -> str:
    """The line of the trial's error file that says what went wrong (its last)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "see the log"


class SweepStopped(Stopped):
    """The sweep driver was stopped by signal `signum`. `resumable`: Tune had started and
    saved the sweep's state, so `--resume` goes on from it; else nothing had run yet."""

    def __init__(self, signum: int, when: str = "", resumable: bool = True):
        KeyboardInterrupt.__init__(self, " ".join(filter(None, [f"stopped by {signal_name(signum)}", when])))
        self.signum, self.resumable = signum, resumable


class StopOnSignals(Callback):
    """The driver's signals, taken as `plasticity train` takes them: SIGTERM, SIGINT, SIGHUP
    and the warning signal (`plan.warning`, time nearly up) stop the sweep. Before Tune runs
    (the checks, Ray's start) the driver stops at once (`SweepStopped`, not resumable: no
    trial ran). Once it runs, the signal goes the way of Tune's own Ctrl-C: Tune stops
    the trials (each resumes from its last checkpoint, written at every evaluation) and
    saves the sweep's state one last time, `tuner.fit()` returns and `signum` says why. A
    second Ctrl-C stops at once. Use inside `active()`, and give it to Tune as a callback:
    Tune installs its own SIGINT (and SIGUSR1) handler when it starts, and `setup` (called
    by Tune right after) takes that one as the way to stop and the signals back."""

    def __init__(self, plan: SignalPlan):
        self.plan = plan
        self.signum: int | None = None
        self._installed = None
        self._phase = "before"  # Tune has not started; then "running"; "after" once fit() returned
        self._tune_stop = None
        self._usr1 = signal.SIG_DFL

    def __getstate__(self):
        # Tune may pickle its callbacks with the sweep's state: the handlers are this process's.
        return {"plan": self.plan}

    def __setstate__(self, state):
        self.__init__(state["plan"])

    @contextmanager
    def active(self):
        with handling_signals(self._take, self.plan.signals) as installed:
            self._installed = installed
            if installed is not None and signal.SIGUSR1 not in self.plan.signals:
                self._usr1 = signal.getsignal(signal.SIGUSR1)
            try:
                yield self
            finally:
                self._installed = None

    @contextmanager
    def shielding_children(self):
        """Processes started inside (Ray's: its GCS, raylet and through it the trial
        workers) start with the stop and warning signals blocked (the mask is inherited;
        Ray itself blocks SIGINT there). A terminal that goes away signals its whole process
        group (SIGHUP), and Slurm signals every process of a job (SIGTERM at the time
        limit): Ray's processes would die at once and leave the driver, still stopping,
        waiting a minute for a GCS that is gone. Signals that arrive meanwhile are taken
        here when it ends."""
        if self._installed is None:
            yield
            return
        blocked = set(self.plan.signals) - {signal.SIGINT}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def take_back(self) -> None:
        """Install the handler again where a library replaced it: Ray's start gives SIGTERM
        its native failure handler (a stack dump, `*** SIGTERM received ...`)."""
        if self._installed is not None:
            for s in self.plan.signals:
                signal.signal(s, self._installed)

    def setup(self, **info):
        if self._installed is None:
            return
        tune_stop = signal.getsignal(signal.SIGINT)
        self._tune_stop = tune_stop if callable(tune_stop) and tune_stop is not self._installed else None
        self._phase = "running"
        if signal.SIGUSR1 not in self.plan.signals:
            # Tune stops on SIGUSR1 too; here it is not the warning signal: as before Tune.
            signal.signal(signal.SIGUSR1, self._usr1)
        self.take_back()

    def fit_returned(self) -> None:
        """`tuner.fit()` returned: a signal from now on stops the driver at once."""
        self._phase = "after"

    def _take(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise SweepStopped(signum, "at once (a second Ctrl-C)")
            return
        self.signum = signum
        if self._phase == "before":
            raise SweepStopped(signum, "before any trial started", resumable=False)
        if self._phase == "after":
            raise SweepStopped(signum, "after the trials, while writing the summary")
        if self._tune_stop is None:  # Tune's own handler is off (TUNE_DISABLE_SIGINT_HANDLER)
            raise SweepStopped(signum, "at once")
        if signum == signal.SIGINT:
            print("\nplasticity sweep: SIGINT: stopping the trials and saving the sweep (Ctrl-C again to stop at "
                  "once)", file=sys.stderr, flush=True)
        self._tune_stop(signal.SIGINT, frame)
