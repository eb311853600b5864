"""`plastic_rnn_fused`: the fully recurrent plastic network over a whole sequence, as one
autograd node. What `PlasticRNN(impl="fused")` calls; checks its inputs and raises
specific errors, then runs `episode.Episode` with the kernels `backend.get_kernels` picks.

    out, (y, hebb) = plastic_rnn_fused(inputs, w, alpha, eta, rule=get_rule("hebb"))
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from plasticity.errors import ConfigError, ShapeError
from plasticity.nn.fused.backend import get_kernels
from plasticity.nn.fused.contract import fused_rules, supports
from plasticity.nn.fused.episode import Episode, EpisodeSpec
from plasticity.nn.fused.schedule import DEFAULT_MAX_AMPLIFICATION, episodes_per_chunk
from plasticity.rules import Rule
from plasticity.rules.elementwise import two_traces, uses


@cache
def _form_reads(rule: Rule) -> tuple[frozenset, bool]:
    """What the episode needs to know of a rule's form, read from its functions' source once
    per rule (not at every call): the arguments d_h reads (the error bound), and whether the
    updates read eta (else eta gets no gradient)."""
    updates = ("update", "update_e") if two_traces(rule.elementwise) else ("update",)
    return frozenset(uses(rule, "d_h")), any("eta" in uses(rule, f) for f in updates)


def plastic_rnn_fused(inputs: Tensor, w: Tensor, alpha: Tensor, eta: Tensor, *, rule: Rule,
                      input_mode: str = "add", clip: float | None = None,
                      initial_state: tuple[Tensor | None, ...] | None = None, reset: Tensor | None = None,
                      segment_steps: int = 0, max_amplification: float | None = None,
                      backend: str = "auto", chunk_episodes: int | str | None = None,
                      modulator: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The fully recurrent plastic network over `inputs` `[B, T, N]`, with the plasticity
    rule `rule` (a `plasticity.rules.Rule`, e.g. `get_rule("oja")`; one with a fused form,
    see `supports`).

    w `[N, N]`, alpha `[N, N]` or `[]`, eta `[]` or `[N, N]`; `initial_state` = (y `[B, N]`,
    *traces): Hebb `[B, N, N]` (and, for a two-trace rule such as `retroactive`, its second
    trace `[B, N, N]`), None for zeros; `reset` `[B, T]` zeroes y and the traces before the
    marked steps. `chunk_episodes`: the schedule, episodes per chunk run through all their
    steps before the next chunk (0: the whole batch at once; `auto`: on CPU as many as fit
    in half the last-level cache, elsewhere the whole batch; None: the environment variable
    PLASTICITY_CHUNK_EPISODES, else `auto`; see `schedule.chunk_episodes_for`). `modulator`:
    for a neuromodulated rule, (w_mod `[N, k]`, b_mod `[k]`) of `M(t) = tanh(y(t) @ w_mod +
    b_mod)`, k = 1 (one M per episode) or N (one per neuron). `backend`: `auto` (Triton on
    CUDA, C++ on CPU, torch ops otherwise), `triton`, `cpp` or `torch`. Returns (activities
    `[B, T, N]`, final (y `[B, N]`, Hebb `[B, N, N]`[, second trace `[B, N, N]`])).
    """
    if not isinstance(rule, Rule):
        raise ConfigError(f"rule must be a plasticity rule (plasticity.rules.get_rule({rule!r})), got "
                          f"{type(rule).__name__} {rule!r}")
    if not supports(rule, notice=False):
        raise ConfigError(f"the fused path has no elementwise form for rule {rule.name!r}: use one of "
                          f"{', '.join(fused_rules())} or the autograd path (impl='autograd')")
    if inputs.dim() != 3 or inputs.shape[-1] != w.shape[0]:
        raise ShapeError(f"inputs must be [B, T, {w.shape[0]}], got {tuple(inputs.shape)}")
    b, steps, n = inputs.shape
    if steps == 0:
        raise ShapeError("inputs must have at least one step (T > 0)")
    w_mod, b_mod = (None, None) if modulator is None else modulator
    if rule.modulated != (modulator is not None):
        raise ConfigError(f"rule {rule.name!r} " + ("is neuromodulated: pass modulator=(w_mod [N, k], b_mod [k])"
                                                    if rule.modulated else "is not neuromodulated: pass no modulator"))
    if w_mod is not None and (w_mod.dim() != 2 or w_mod.shape[0] != n or w_mod.shape[1] not in (1, n)
                              or tuple(b_mod.shape) != (w_mod.shape[1],)):
        raise ShapeError(f"modulator must be (w_mod [{n}, 1 or {n}], b_mod [1 or {n}]), got "
                         f"({tuple(w_mod.shape)}, {tuple(b_mod.shape)})")
    traces = len(rule.traces)
    y0, *given = (None,) if initial_state is None else initial_state
    if len(given) > traces:
        raise ShapeError(f"initial_state must be (y, {', '.join(rule.traces)}) for rule {rule.name!r}, got "
                         f"{len(given) + 1} tensors")
    given = given + [None] * (traces - len(given))
    if any(t is not None for t in given):
        given = [inputs.new_zeros(b, n, n) if t is None else t for t in given]
    h0, e0 = given[0], given[1] if traces > 1 else None
    y0 = inputs.new_zeros(b, n) if y0 is None else y0
    same_episode = None if reset is None else (1 - reset.to(inputs.dtype)).contiguous()
    kernels = get_kernels(backend, inputs.device, inputs.dtype, rule)
    max_amp = max_amplification or DEFAULT_MAX_AMPLIFICATION.get(inputs.dtype, 10.0)
    chunk = episodes_per_chunk(b, n, inputs.element_size(), eta.dim() > 0, chunk_episodes, inputs.device,
                               traces=traces)
    d_h_reads, reads_eta = _form_reads(rule)
    spec = EpisodeSpec(rule.elementwise, d_h_reads, input_mode == "clamp", clip, segment_steps, max_amp, kernels,
                       chunk, reads_eta=reads_eta, traces=traces)
    tensors = (inputs, y0, h0, e0, w, alpha, eta, w_mod, b_mod)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    out, *final = Episode.apply(inputs, same_episode, y0, h0, e0, w, alpha, eta, w_mod, b_mod, spec, save)
    return out, (out[:, -1], *final)
