"""Which signals stop a training run, and how: `SignalPlan`, `stop_on_signals`, `raise_on_signals`.

SIGTERM, SIGINT and SIGHUP always stop a run (a scheduler's or `kill`'s stop, Ctrl-C, a
terminal that goes away); the scheduler's warning that time is nearly up (SIGUSR1 by
default) stops it the same way or only asks for a checkpoint (`SignalPlan.on_warning`).
During training (`stop_on_signals`, used by `plasticity.train.loop`) a stop lets the
current optimiser step finish and the loop write a checkpoint, then raise `Interrupted`;
before it (`raise_on_signals`: the run's setup, a compile) a stop raises
`StoppedBeforeTraining` at once. Either exits 128 + the signal's number from the CLI
(143, 130, 129, 138). Only the main thread can take signals: elsewhere (a Ray Tune
trial) nothing is installed and the host handles them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class Stopped(KeyboardInterrupt):
    """A run stopped by signal `signum`. `exit_code` is the shell convention (128 + signal
    number: 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP, 138 for SIGUSR1)."""

    def __init__(self, signum: int, message: str):
        super().__init__(f"stopped by {signal_name(signum)} {message}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Interrupted(Stopped):
    """Training was stopped by a signal after writing a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path, episode: int):
        super().__init__(signum, f"at episode {episode}; checkpoint {checkpoint}")
        self.checkpoint, self.episode = checkpoint, episode


class StoppedBeforeTraining(Stopped):
    """A signal arrived before the first training step (e.g. while the fused C++ kernels
    were being built): nothing new to save."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals that stop a run with a checkpoint: a scheduler's or `kill`'s stop (SIGTERM),
Ctrl-C (SIGINT), the terminal going away (SIGHUP: an SSH session that drops)."""

WarningSignal = Literal["USR1", "USR2", "ALRM", "XCPU"]
"""Signals a scheduler can send as "time is nearly up" (Slurm `--signal=B:USR1@120`; some
batch systems send SIGUSR2 or SIGXCPU before the limit)."""


@dataclass(frozen=True)
class SignalPlan:
    """What a run does with signals: the stop signals always stop it with a checkpoint;
    the `warning` signal (time nearly up) stops it the same way (`on_warning="stop"`, so
    that a requeue script can test the exit code, 128 + its number) or writes a checkpoint
    and goes on (`"checkpoint"`, for a scheduler that only warns)."""

    warning: WarningSignal = "USR1"
    on_warning: Literal["stop", "checkpoint"] = "stop"

    @property
    def warning_signum(self) -> signal.Signals:
        return signal.Signals["SIG" + self.warning]

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        return (*STOP_SIGNALS, self.warning_signum)

    def stops(self, signum: int) -> bool:
        """Whether `signum` stops the run (rather than asking for a checkpoint)."""
        return signum != self.warning_signum or self.on_warning == "stop"


_plan = [SignalPlan()]


def current_signal_plan() -> SignalPlan:
    return _plan[-1]


@contextmanager
def signal_plan(plan: SignalPlan):
    """Runs started inside use `plan` (the CLI's --warning-signal / --on-warning; library
    users call it the same way). The default plan: the warning is SIGUSR1, and it stops."""
    _plan.append(plan)
    try:
        yield plan
    finally:
        _plan.remove(plan)


def signal_name(signum: int) -> str:
    """`SIGTERM`; the warning signal as `SIGUSR1 (time nearly up)`."""
    name = signal.Signals(signum).name
    return f"{name} (time nearly up)" if signum not in STOP_SIGNALS else name


@contextmanager
def raise_on_signals(during: str):
    """While active, the signals that stop a run raise `StoppedBeforeTraining` at once (a
    one-time setup such as a compile, which has nothing to checkpoint and can take a
    minute: a preempted job must not wait for it, nor die without a word). A warning that
    only asks for a checkpoint is ignored: there is none to write yet. Main thread only,
    as `stop_on_signals`."""
    plan = current_signal_plan()

    def handler(signum, frame):
        if plan.stops(signum):
            raise StoppedBeforeTraining(signum, during)

    with handling_signals(handler, plan.signals):
        yield


@contextmanager
def handling_signals(handler, signals):
    """`handler` takes `signals` while active, the previous handlers after; yields the
    function installed (to install again where a library took a signal over, as Ray's
    start does with SIGTERM), or None where nothing was. Only the main thread can take
    signals: elsewhere (a Ray Tune trial) this does nothing and the host handles them.
    The one place signal handlers are installed (runs and the sweep driver)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return

    def take(signum, frame):
        if signum == signal.SIGHUP:
            _drop_hung_up_output()
        handler(signum, frame)

    previous = {s: signal.signal(s, take) for s in signals}
    try:
        yield take
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _drop_hung_up_output() -> None:
    """Point stdout and stderr at /dev/null where writing to them fails: after SIGHUP from a
    terminal that went away (an SSH session that dropped), every write to it fails with
    EIO, and the next progress-bar update would end the run before its checkpoint."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


@contextmanager
def stop_on_signals():
    """While active, a signal that stops the run (`current_signal_plan`) sets
    `flag["signum"]` instead of killing the process (a second SIGINT raises
    KeyboardInterrupt at once); a warning that asks for a checkpoint sets
    `flag["checkpoint"]`. Only the main thread can take signals: elsewhere (a Ray Tune
    trial) this does nothing and the host handles them."""
    plan = current_signal_plan()
    flag: dict[str, int | None] = {"signum": None, "checkpoint": None}

    def handler(signum, frame):
        if not plan.stops(signum):
            flag["checkpoint"] = signum
            return
        if flag["signum"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if flag["signum"] is None:
            flag["signum"] = signum
            print(f"\nplasticity: {signal_name(signum)}: stopping after this step with a checkpoint"
                  + (" (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else ""),
                  file=sys.stderr)

    with handling_signals(handler, plan.signals):
        yield flag
