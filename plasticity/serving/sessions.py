"""Live sessions: each holds its own network state (activity and Hebbian traces) and
keeps learning with every step; steps of many sessions run as one batched forward.

    store = SessionStore(ServedModel.from_checkpoint(path), max_sessions=64, idle_timeout_s=600)
    sid = store.create()
    out = store.step(sid, item [P])                       # one network step, state updated
    outs = store.step_many([(sid_a, x_a), (sid_b, x_b)])  # one forward for both sessions
    outs = store.steps(sid, items [T, P])                 # T steps in one forward -> [T, P]

A session's state is `N + N^2` floats for the plastic network (4 MB at N = 1001), made
when the session opens. `step_many` (and `steps_many`, for sequences; those of equal
length share a forward) applies each session's steps in the order given, also when one
session appears several times in a batch (those run as successive rounds). The store is
thread-safe (one lock); it does no I/O and imports no server.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from plasticity.errors import check_positive
from plasticity.serving.episode import RequestError
from plasticity.serving.model import ServedModel, copy_state_into, stack_states, zero_state_
from plasticity.train.episodic import eval_chunk


def default_max_forward(n_neurons: int) -> int:
    """Sessions per forward: up to ~16 MB of Hebb per forward while one session's Hebb is
    under 1 MB (256 at N = 51), else 1. A step is bound by reading and writing each
    session's own N^2 Hebb, which batching cannot share; stacking the states into a batch
    and copying them back costs two more passes. Measured on 2 shared cores
    (benchmarks/bench_serve.py): at N = 51, 64 sessions in one forward made 8x the steps/s
    of one forward each; at N = 1001, forwards of 4 made 0.58-0.75x."""
    per_session = 4 * n_neurons * n_neurons
    return 1 if per_session > (1 << 20) else eval_chunk(n_neurons)


@dataclass
class Session:
    state: object
    """Batch-1 state of the network (e.g. `PlasticState(y [1, N], (Hebb [1, N, N],))`)."""
    created: float
    last_used: float
    steps: int = 0
    resets: int = 0


class SessionStore:
    """Sessions of one served network, keyed by unguessable ids (see the module docstring).

    Args:
        served: the network.
        max_sessions: open sessions at most; `create` past it raises a 503 `RequestError`.
        idle_timeout_s: a session not stepped, read or reset for this long is deleted.
        id_prefix: put in front of every id (the Serve app routes ids to shards by it).
        max_forward: sessions per forward at most (a larger batch runs as several
            forwards); default `default_max_forward(N)`.
        max_sequence: steps one sequence request may hold at most.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, served: ServedModel, *, max_sessions: int = 64, idle_timeout_s: float = 600.0,
                 id_prefix: str = "", max_forward: int | None = None, max_sequence: int = 4096,
                 clock: Callable[[], float] = time.monotonic):
        check_positive("max_sessions", max_sessions)
        check_positive("idle_timeout_s", idle_timeout_s)
        check_positive("max_sequence", max_sequence)
        self.served, self.max_sessions, self.idle_timeout_s = served, max_sessions, idle_timeout_s
        self.max_sequence = max_sequence
        self.id_prefix, self.clock = id_prefix, clock
        self.max_forward = max_forward or default_max_forward(served.n_neurons)
        check_positive("max_forward", self.max_forward)
        self.sessions: dict[str, Session] = {}
        self.evicted = 0
        self._lock = threading.Lock()
        # Held while states are read or written (forwards, resets): one forward at a time.
        self._state_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.sessions)

    def create(self) -> str:
        """Open a session with a zero state; its id (prefix + 32 url-safe random characters)."""
        with self._lock:
            self._evict_idle()
            if len(self.sessions) >= self.max_sessions:
                raise RequestError(f"session limit reached ({self.max_sessions} open): delete a session "
                                   f"(DELETE /sessions/ID) or wait for idle ones to expire after "
                                   f"{self.idle_timeout_s:g} s", status=503)
            sid = self.id_prefix + secrets.token_urlsafe(24)
            now = self.clock()
            self.sessions[sid] = Session(self.served.initial_state(1), now, now)
            return sid

    def get(self, sid: str) -> Session:
        with self._lock:
            self._evict_idle()
            session = self.sessions.get(sid)
        if session is None:
            raise RequestError("no such session: it was deleted, expired after "
                               f"{self.idle_timeout_s:g} s idle, or never existed; open one with POST /sessions",
                               status=404)
        return session

    def info(self, sid: str) -> dict:
        """Step count, age, idle time and the memory its state takes."""
        s = self.get(sid)
        now = self.clock()
        s.last_used = now
        traces = getattr(s.state, "traces", None)
        out = {"steps": s.steps, "resets": s.resets, "age_s": now - s.created,
               "memory_bytes": self.served.state_bytes(), "neurons": self.served.n_neurons}
        if traces:
            # How much the session has learned: the size of its Hebbian trace.
            out["hebb_norm"] = float(traces[0].norm())
        return out

    def reset(self, sid: str) -> None:
        """Back to a zero state (a new episode) without closing the session."""
        s = self.get(sid)
        with self._state_lock:
            zero_state_(s.state)
            s.steps, s.resets, s.last_used = 0, s.resets + 1, self.clock()

    def delete(self, sid: str) -> None:
        with self._lock:
            if self.sessions.pop(sid, None) is None:
                raise RequestError("no such session: it was already deleted or expired", status=404)

    def evict_idle(self) -> int:
        """Delete sessions idle for longer than the timeout; how many were deleted."""
        with self._lock:
            return self._evict_idle()

    def _evict_idle(self) -> int:
        cutoff = self.clock() - self.idle_timeout_s
        stale = [sid for sid, s in self.sessions.items() if s.last_used < cutoff]
        for sid in stale:
            del self.sessions[sid]
        self.evicted += len(stale)
        return len(stale)

    def step(self, sid: str, values) -> np.ndarray:
        """One step of one session: item `[P]` -> output `[P]`."""
        (out,) = self.step_many([(sid, values)])
        if isinstance(out, RequestError):
            raise out
        return out

    def steps(self, sid: str, values) -> np.ndarray:
        """T steps of one session in one forward: items `[T, P]` -> outputs `[T, P]`."""
        (out,) = self.steps_many([(sid, values)])
        if isinstance(out, RequestError):
            raise out
        return out

    def step_many(self, requests: list[tuple[str, object]]) -> list[np.ndarray | RequestError]:
        """One step for each `(session id, item [P])`, batched into as few forwards as the
        repeats of a session allow; per request the output `[P]` or the `RequestError`."""
        return self._run_many(requests, lambda v: self.served.layout.check_step(v)[None], single=True)

    def steps_many(self, requests: list[tuple[str, object]]) -> list[np.ndarray | RequestError]:
        """A sequence for each `(session id, items [T, P])`: those of equal length T run as
        one forward over T steps (as single steps are batched); per request the outputs
        `[T, P]` or the `RequestError`."""
        return self._run_many(requests, lambda v: self.served.layout.check_steps(v, self.max_sequence), single=False)

    def _run_many(self, requests, check, single: bool) -> list:
        results: list = [None] * len(requests)
        pending: list[tuple[int, Session, np.ndarray]] = []
        for i, (sid, values) in enumerate(requests):
            try:
                pending.append((i, self.get(sid), check(values)))
            except RequestError as e:
                results[i] = e
        while pending:
            # A session's k-th request of this batch runs in round k: its steps stay in order.
            seen: set[int] = set()
            this_round, later = [], []
            for item in pending:
                (later if id(item[1]) in seen else this_round).append(item)
                seen.add(id(item[1]))
            by_length: dict[int, list] = {}
            for item in this_round:
                by_length.setdefault(len(item[2]), []).append(item)
            for group in by_length.values():
                for start in range(0, len(group), self.max_forward):
                    chunk = group[start:start + self.max_forward]
                    for (i, _, _), out in zip(chunk, self._forward(chunk), strict=True):
                        results[i] = out[0] if single else out
            pending = later
        return results

    def _forward(self, batch: list[tuple[int, Session, np.ndarray]]) -> list[np.ndarray]:
        """One forward over T steps for B sessions: items `[T, P]` each (equal T)."""
        sessions = [s for _, s, _ in batch]
        values = torch.from_numpy(np.stack([v for _, _, v in batch]))
        dim = self.served.batch_dim
        with self._state_lock:
            state = sessions[0].state if len(sessions) == 1 else stack_states([s.state for s in sessions], dim)
            outputs, new_state = self.served.steps(values, state)
            now = self.clock()
            for j, s in enumerate(sessions):
                copy_state_into(s.state, new_state, j, dim)
                s.steps += values.shape[1]
                s.last_used = now
        return list(outputs.numpy().copy())
