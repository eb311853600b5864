"""What a sweep shows while it runs: one progress view, and everything else in a log file.

By default Ray's and MLflow's own logging (and Python warnings) go to `sweep.log` in the
sweep's results folder, and the terminal gets one progress line that updates in place
(a tqdm bar on a terminal; one line per finished trial when the output is a file).
`--verbose` leaves all of them on the terminal, as Ray and MLflow print them.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import sys
import time
from pathlib import Path

from ray.tune import Callback

QUIET_LOGGERS = ("ray", "mlflow", "alembic", "optuna", "py.warnings", "urllib3", "filelock", "matplotlib")


def quiet_logging() -> logging.handlers.MemoryHandler:
    """Take the libraries' logging and Python warnings off the terminal. They are held in
    memory until `log_to_file` names the file (the results folder exists only once the
    sweep's checks have passed)."""
    import os

    # Ray's newer console output prints a configuration box and paths even at verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
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
