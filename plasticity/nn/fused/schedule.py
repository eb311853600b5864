"""The schedule of an episode: which exact Hebb states the forward pass keeps for the
backward pass, and how many episodes run together (chunks sized to the CPU's cache).

    every = recompute_segment(steps)                     # a kept state every ~sqrt(T) steps
    chunk = episodes_per_chunk(32, 1001, 4, False, None, torch.device("cpu"))

The reasons and the measurements are in `plasticity/rules/README.md` ("Running the rules
backwards": the error bound, clipped steps; "Schedule") and in the README ("Schedules").
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from plasticity.errors import ConfigError
from plasticity.rules import Elementwise

# ------------------------------------------------------------------- kept states
DEFAULT_MAX_AMPLIFICATION = {torch.float64: 1e6, torch.float32: 10.0}
"""Largest growth of the rounding error allowed between checkpoints (other dtypes: 10).
float32 at 10: a 106-step episode with eta 0.01 stores no state, with eta 0.1 four."""


def recompute_segment(steps: int) -> int:
    """With clipping: an exact state is kept every this many steps (about sqrt(T)), so that
    the states of clipped steps, which inversion cannot rebuild, are recomputed from at most
    this many steps back: O(T / K + K) Hebb states per episode rather than one per step."""
    return max(1, math.ceil(math.sqrt(steps)))


class Amplification:
    """Bound on how much inverting one step can grow the rounding error in Hebb: the
    largest `1 / |d_h|` (d Hebb(t+1) / d Hebb(t), the rule's own derivative) over the
    connections, given the step's activities (and M(t)). `reads`: which of (h, pre, post,
    eta, mod) the rule's d_h reads."""

    def __init__(self, form: Elementwise, eta: Tensor, reads: set[str]):
        self.form, self.eta, self.reads = form, eta.detach(), reads
        # d_h of the decaying rule reads eta alone (neuromod's nothing): one value for the episode.
        self.constant = None if reads & {"h", "pre", "post", "mod"} else self._bound(None, None, None)

    def _bound(self, pre: Tensor | None, post: Tensor | None, mod: Tensor | None) -> float:
        if "h" in self.reads:
            return math.inf  # depends on Hebb itself: no cheap bound, store every state
        zero = self.eta.new_zeros(())
        pre_i = pre.unsqueeze(-1) if pre is not None and "pre" in self.reads else zero
        post_j = post.unsqueeze(-2) if post is not None and "post" in self.reads else zero
        mod_j = mod.unsqueeze(-2) if mod is not None and "mod" in self.reads else zero
        smallest = float(torch.as_tensor(self.form.d_h(zero, pre_i, post_j, self.eta, mod_j)).abs().min())
        return math.inf if smallest == 0 else 1 / smallest

    def __call__(self, pre: Tensor, post: Tensor, mod: Tensor | None = None) -> float:
        return self.constant if self.constant is not None else self._bound(pre, post, mod)


# ------------------------------------------------------------------- chunks of episodes
CHUNK_ENV = "PLASTICITY_CHUNK_EPISODES"
"""Environment variable overriding the chunk size (episodes; 0 = the whole batch at once)."""
DEFAULT_LLC_BYTES = 32 * 2**20
AUTO_CACHE_CAP_BYTES = 96 * 2**20
"""The most cache `auto` counts on. In a cloud VM, sysfs reports the host socket's whole L3,
shared with cores (and tenants) the VM does not see: 260 MiB on a 2-core Xeon VM, where
the 15 episodes per chunk that size gives ran no faster than the batch schedule (7.0-7.9
episodes/s at N = 1001, B = 32) and the 4 that this cap gives ran 11.4-11.6 (README,
"Schedules"). A machine whose cache is below the cap is unaffected."""


@cache
def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache of cpu0 (Linux sysfs, else sysconf, else 32 MiB).
    sysfs first: in a VM, sysconf can report the host's total over all its L3 slices."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KMGkmg")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    if sizes:
        return max(sizes)
    try:
        size = os.sysconf("SC_LEVEL3_CACHE_SIZE") or os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (ValueError, OSError):
        size = 0
    return size if size and size > 0 else DEFAULT_LLC_BYTES


def _requested(requested: int | str | None) -> int | str:
    """`requested` as given, or (None) the environment variable PLASTICITY_CHUNK_EPISODES
    read as a number or `auto` (unset: `auto`)."""
    if requested is not None:
        return requested
    text = os.environ.get(CHUNK_ENV, "").strip() or "auto"
    if text == "auto":
        return text
    if not text.isdigit():
        raise ConfigError(f"{CHUNK_ENV}={text!r}: give a number of episodes per chunk "
                          "(0: the whole batch) or 'auto' (sized to the cache)")
    return int(text)


def chunk_episodes_for(batch: int, n: int, itemsize: int, eta_per_connection: bool,
                       requested: int | str | None = None, cache_bytes: int | None = None, traces: int = 1) -> int:
    """Episodes per chunk, in 1..batch (batch: one chunk, the `batch` schedule).

    `requested` (else the environment variable PLASTICITY_CHUNK_EPISODES; unset: `auto`):
    a number of episodes (0: the whole batch), or `auto`: as many episodes as fit in half
    the last-level cache (counted at most `AUTO_CACHE_CAP_BYTES`) beside the `[N, N]`
    tensors every episode reads (w, alpha, dalpha, and eta, deta per connection), counting
    the backward pass's two `[N, N]` tensors per episode and trace (each trace and its
    gradient), at least one. Half: at N = 1001 float32 in a 32 MiB
    cache, one episode per chunk (20 MB) ran 1.2x faster than two (28 MB) and 1.7x faster
    than the batch schedule (README, "Schedules"); the rest of the cache holds what a step
    also reads (activities, the optimiser's state, other processes on a shared machine)."""
    requested = _requested(requested)
    if requested != "auto":
        if not isinstance(requested, int) or requested < 0:
            raise ConfigError(f"chunk_episodes must be >= 0 (0: the whole batch) or 'auto', got {requested!r}")
        return batch if requested == 0 else min(requested, batch)
    cache_bytes = min(last_level_cache_bytes() if cache_bytes is None else cache_bytes, AUTO_CACHE_CAP_BYTES)
    shared = (3 + 2 * eta_per_connection) * n * n * itemsize
    return max(1, min(batch, (cache_bytes // 2 - shared) // (2 * traces * n * n * itemsize)))


def episodes_per_chunk(batch: int, n: int, itemsize: int, eta_per_connection: bool, requested: int | str | None,
                       device: torch.device, traces: int = 1) -> int:
    """`chunk_episodes_for` on `device`: `auto` sizes chunks to the cache on CPU only (a
    GPU runs the whole batch as one chunk)."""
    requested = _requested(requested)
    if requested == "auto" and device.type != "cpu":
        requested = 0  # the cache-sized chunks are a CPU schedule
    return chunk_episodes_for(batch, n, itemsize, eta_per_connection, requested, traces=traces)
