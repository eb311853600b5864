"""Plastic layers: a fixed weight `w` plus a Hebbian trace scaled by `alpha`.

    PlasticLinear  feed-forward, `y(t) = act(x(t) @ (w + alpha * Hebb(t)) + b + drive(t))`
    PlasticRNN     fully recurrent with input drive or clamping (the paper's network)

Both are batched over B episodes and pass their state in and out explicitly:
activations `[B, T, N]`, Hebb `[B, N_in, N_out]` (rows presynaptic, columns
postsynaptic). A `reset` mask `[B, T]` zeroes the state before the marked steps, so
episodes of different lengths can be packed into one run. The plasticity rule comes
from `plasticity.rules`; the step-by-step references live in `naive.py`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from plasticity.config.renames import deprecated_value
from plasticity.errors import (
    ETA_MIN,
    CheckpointError,
    ConfigError,
    ShapeError,
    check_choice,
    check_eta,
    check_positive,
)
from plasticity.nn.fused import BACKENDS as FUSED_BACKENDS
from plasticity.nn.fused import plastic_rnn_fused
from plasticity.nn.fused import supports as fused_supports
from plasticity.nn.inputs import INPUT_MODES, drive_neurons
from plasticity.rules import Traces, get_rule
from plasticity.rules.neuromod import modulation_signal

ALPHA_MODES = ("free", "shared")
ETA_MODES = ("scalar", "per-connection")
MODULATIONS = ("none", "network", "neuron")
IMPLS = ("fused", "autograd")
# ETA_MIN (1e-6): the smallest eta the parameterisation gives, so that a learned eta never
# reaches 0 (a rule that no longer learns anything, with no gradient to come back), even in float32.


def eta_from_logit(logit: Tensor) -> Tensor:
    """The plasticity rate from its unconstrained parameter: `ETA_MIN + (1 - ETA_MIN) *
    sigmoid(logit)`, in [ETA_MIN, 1] (1 only for logit = +inf or by float rounding), the
    range every rule accepts (decaying Hebb, Oja, the retroactive trace's rate). Same
    shape as `logit`."""
    # Written as s(l) + ETA_MIN * s(-l): exact at both ends (a fixed eta of 1 stays 1)
    # and without cancellation for small eta.
    return torch.sigmoid(logit) + ETA_MIN * torch.sigmoid(-logit)


def eta_to_logit(eta: Tensor) -> Tensor:
    """Inverse of `eta_from_logit` (float64 inside, so a given eta comes back to within
    rounding); eta = 1 gives +inf (a fixed eta of 1 stays exactly 1), eta <= ETA_MIN a
    finite logit at ETA_MIN."""
    e = eta.detach().to(torch.float64)
    # At least 1e-12 above ETA_MIN: a finite logit, from which a learned eta can move back up.
    u = ((e - ETA_MIN) / (1 - ETA_MIN)).clamp_min(1e-12)
    return (torch.log(u) - torch.log1p(-u)).to(eta.dtype)


class PlasticState(NamedTuple):
    """State of a `PlasticRNN`: activity `y` `[B, N]` and the rule's traces
    (first `Hebb` `[B, N, N]`)."""

    y: Tensor
    traces: Traces


class PlasticWeights(nn.Module):
    """The trained parameters of a plastic connection `[N_in, N_out]` and its rule.

    Args:
        n_in, n_out: sizes of the connection.
        rule: name of a registered plasticity rule (`hebb`, `oja`, ...).
        eta: initial plasticity rate, in (0, 1] ((0, 1) if learned).
        eta_mode: `scalar` (one eta for the layer, as in the paper) or `per-connection`.
        learn_eta: train eta by backprop (True) or keep it fixed.

    eta is stored as an unconstrained parameter `eta_logit` (`[]` or `[N_in, N_out]`)
    and `eta` is the value `eta_from_logit(eta_logit)`: whatever the optimiser does,
    eta stays in the rule's valid range, and its gradient is the chain rule through
    the sigmoid. Assigning `layer.eta = value` sets the logit. Checkpoints written
    before this (a raw `eta` holding the value) are converted on load.
        alpha_mode: `free` (one alpha per connection) or `shared` (one alpha for every
            connection; the paper's "yoked").
        clip: clamp Hebb to [-clip, clip] after each update; None for no clipping.
        init_std: standard deviation of the normal init of `w` and `alpha`.
    """

    def __init__(self, n_in: int, n_out: int, *, rule: str = "hebb", eta: float = 0.01,
                 eta_mode: str = "scalar", learn_eta: bool = True, alpha_mode: str = "free",
                 clip: float | None = None, init_std: float = 0.01):
        super().__init__()
        check_positive("n_in", n_in)
        check_positive("n_out", n_out)
        check_eta(eta, learned=learn_eta)
        alpha_mode = deprecated_value("alpha_mode", alpha_mode)
        check_choice("alpha mode", alpha_mode, ALPHA_MODES)
        check_choice("eta mode", eta_mode, ETA_MODES)
        if clip is not None:
            check_positive("clip", clip)
        self.rule = get_rule(rule)
        self.n_in, self.n_out, self.clip = n_in, n_out, clip
        self.alpha_mode, self.eta_mode = alpha_mode, eta_mode
        self.w = nn.Parameter(init_std * torch.randn(n_in, n_out))
        alpha_shape = (n_in, n_out) if alpha_mode == "free" else ()
        self.alpha = nn.Parameter(init_std * torch.randn(alpha_shape))
        eta_shape = (n_in, n_out) if eta_mode == "per-connection" else ()
        self.eta_logit = nn.Parameter(eta_to_logit(torch.full(eta_shape, float(eta))), requires_grad=learn_eta)
        self.register_load_state_dict_pre_hook(_convert_old_eta)

    @classmethod
    def options(cls, cfg) -> dict:
        """This class's keyword arguments (rule, eta, eta_mode, learn_eta, alpha_mode, clip,
        init_std) read from a config: `PlasticRNN(n, **PlasticWeights.options(cfg))`."""
        names = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "n_in", "n_out")]
        return {name: getattr(cfg, name) for name in names}

    @property
    def eta(self) -> Tensor:
        """The plasticity rate (`[]` or `[N_in, N_out]`), a differentiable function of `eta_logit`."""
        return eta_from_logit(self.eta_logit)

    @eta.setter
    def eta(self, value) -> None:
        value = torch.as_tensor(value, dtype=self.eta_logit.dtype)
        if not bool(((value >= ETA_MIN) & (value <= 1)).all()):
            raise ConfigError(f"eta must be in [{ETA_MIN:g}, 1], got values in [{float(value.min())}, "
                              f"{float(value.max())}]")
        with torch.no_grad():
            self.eta_logit.copy_(eta_to_logit(value).expand_as(self.eta_logit))

    def zero_traces(self, batch: int, *, device=None, dtype=None) -> Traces:
        """Traces at the start of an episode: zeros `[B, N_in, N_out]` for each."""
        device = device or self.w.device
        dtype = dtype or self.w.dtype
        return tuple(torch.zeros(batch, self.n_in, self.n_out, device=device, dtype=dtype)
                     for _ in self.rule.traces)

    def project(self, pre: Tensor, hebb: Tensor) -> Tensor:
        """`pre @ (w + alpha * Hebb)`: `[B, N_in]`, `[B, N_in, N_out]` -> `[B, N_out]`."""
        fixed = pre @ self.w
        if self.alpha.dim() == 0:
            # Yoked alpha: scale after the product, so no alpha*Hebb tensor is made.
            plastic = self.alpha * torch.bmm(pre.unsqueeze(1), hebb).squeeze(1)
        else:
            plastic = torch.bmm(pre.unsqueeze(1), self.alpha * hebb).squeeze(1)
        return fixed + plastic

    def update(self, traces: Traces, pre: Tensor, post: Tensor, mod: Tensor | None = None,
               eta: Tensor | None = None) -> Traces:
        """Apply the rule once: `pre` `[B, N_in]`, `post` `[B, N_out]`; `eta` is `self.eta`
        unless given (loops pass it once per sequence instead of recomputing it per step)."""
        return self.rule.update(traces, pre, post, eta=self.eta if eta is None else eta, clip=self.clip, mod=mod)

    def check_traces(self, traces: Traces, batch: int) -> None:
        expected = (batch, self.n_in, self.n_out)
        if len(traces) != len(self.rule.traces):
            raise ShapeError(f"rule {self.rule.name!r} carries {len(self.rule.traces)} traces "
                             f"{self.rule.traces}, got {len(traces)}: pass the state the layer returned")
        for name, trace in zip(self.rule.traces, traces, strict=True):
            if tuple(trace.shape) != expected:
                raise ShapeError(f"{name} trace has shape {tuple(trace.shape)}, expected {expected} "
                                 "[B, N_in, N_out]: pass the state the layer returned or None")

    def extra_repr(self) -> str:
        return (f"n_in={self.n_in}, n_out={self.n_out}, rule={self.rule.name}, alpha={self.alpha_mode}, "
                f"eta={self.eta_mode}, clip={self.clip}")


def _convert_old_eta(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                     error_msgs) -> None:
    """Load-state-dict pre-hook: a checkpoint written before eta was parameterised holds
    `eta` (the value itself); convert it to `eta_logit`, or refuse one that went out of
    range (a learned raw eta could become negative) with a one-line `CheckpointError`."""
    old, new = prefix + "eta", prefix + "eta_logit"
    if old not in state_dict or new in state_dict:
        return
    value = state_dict.pop(old)
    if not bool(((value > 0) & (value <= 1)).all()):
        raise CheckpointError(f"the checkpoint's eta ({prefix}eta) has values in [{float(value.min()):.4g}, "
                              f"{float(value.max()):.4g}], outside (0, 1]: it was trained before eta was kept in "
                              "its range and cannot be converted; retrain, or use a checkpoint with a valid eta")
    state_dict[new] = eta_to_logit(value)


def _check_sequence(name: str, x: Tensor, width: int) -> None:
    if x.dim() != 3 or x.shape[-1] != width:
        raise ShapeError(f"{name} must be [B, T, {width}], got {tuple(x.shape)}: "
                         "add the batch and time dimensions (x[None] / x[:, None])")


def _check_reset(reset: Tensor | None, batch: int, steps: int) -> None:
    if reset is not None and tuple(reset.shape) != (batch, steps):
        raise ShapeError(f"reset must be [B, T] = {(batch, steps)}, got {tuple(reset.shape)}")


def _same_episode_mask(reset: Tensor | None, t: int, dtype) -> Tensor | None:
    """`[B, 1]`: 1 where step t goes on with the same episode, 0 where `reset` starts a new
    one (its state is zeroed); None where nothing resets."""
    return None if reset is None else (1 - reset[:, t].to(dtype)).unsqueeze(-1)


def _mask_traces(traces: Traces, same_episode: Tensor) -> Traces:
    return tuple(tr * same_episode.unsqueeze(-1) for tr in traces)


class PlasticLinear(nn.Module):
    """Feed-forward plastic layer run over a sequence.

    `y(t) = act(x(t) @ (w + alpha * Hebb(t)) + b + drive(t))`, then
    `Hebb(t+1) = rule(Hebb(t), pre=x(t), post=y(t))`.

    `drive` `[B, T, N_out]` is added to the pre-activation: for one-shot learning it
    carries the label on the presentation steps, which makes the Hebbian update bind
    inputs to labels. Keyword arguments are those of `PlasticWeights`.
    """

    def __init__(self, n_in: int, n_out: int, *, bias: bool = True,
                 activation: Callable[[Tensor], Tensor] | None = None, **plastic):
        super().__init__()
        self.plastic = PlasticWeights(n_in, n_out, **plastic)
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.activation = activation

    def forward(self, x: Tensor, traces: Traces | None = None, *, drive: Tensor | None = None,
                reset: Tensor | None = None) -> tuple[Tensor, Traces]:
        """x `[B, T, N_in]` -> (y `[B, T, N_out]`, final traces)."""
        p = self.plastic
        _check_sequence("x", x, p.n_in)
        batch, steps, _ = x.shape
        if drive is not None and tuple(drive.shape) != (batch, steps, p.n_out):
            raise ShapeError(f"drive must be [B, T, N_out] = {(batch, steps, p.n_out)}, got {tuple(drive.shape)}")
        _check_reset(reset, batch, steps)
        if traces is None:
            traces = p.zero_traces(batch, device=x.device, dtype=x.dtype)
        p.check_traces(traces, batch)
        eta = p.eta
        outputs = []
        for t in range(steps):
            same_episode = _same_episode_mask(reset, t, x.dtype)
            if same_episode is not None:
                traces = _mask_traces(traces, same_episode)
            pre = x[:, t]
            a = p.project(pre, traces[0])
            if self.bias is not None:
                a = a + self.bias
            if drive is not None:
                a = a + drive[:, t]
            y = a if self.activation is None else self.activation(a)
            traces = p.update(traces, pre, y, eta=eta)
            outputs.append(y)
        return torch.stack(outputs, 1), traces


class PlasticRNN(nn.Module):
    """Fully recurrent plastic network of N neurons with driven or clamped inputs.

    `y(t) = drive(y(t-1) @ (w + alpha * Hebb(t)), x(t))` (see `drive_neurons`), then
    `Hebb(t+1) = rule(Hebb(t), pre=y(t-1), post=y(t))`.

    Args:
        n: number of neurons.
        input_mode: `add` or `clamp` (see `drive_neurons`).
        impl: `fused` (default): the whole sequence as one autograd node (`fused/`):
            one pass over Hebb per step, and a backward pass that rebuilds Hebb by
            inverting the rule (recomputing it in segments where it clipped, and for
            `retroactive`, which carries two traces), so memory does not grow with steps x
            N^2; the neuromodulated rules compute M(t) inside it. A rule without an
            elementwise form runs `autograd` instead. `autograd`: step-by-step autograd,
            the reference.
        segment_steps: if > 0, `autograd` recomputes the forward pass in segments of this
            many steps during backward instead of storing every step's N^2 intermediates
            (memory falls from O(T) to O(T / k + k) Hebb-sized tensors per episode);
            `fused` stores an exact Hebb state every this many steps (bounds the
            rounding error of the inversion further; with `clip`, the states of clipped
            steps, and every state of a two-trace rule, are recomputed from these,
            every ceil(sqrt(T)) steps when 0).
        fused_backend: kernels of the fused path: `auto` (Triton on CUDA, C++ on CPU, torch
            ops elsewhere), `triton`, `cpp` or `torch`.
        chunk_episodes: schedule of the fused path: episodes per chunk, each chunk run
            through all its steps before the next (0: the whole batch stepped together;
            `auto`: on CPU as many as fit in half the last-level cache, on a GPU the whole
            batch; None: PLASTICITY_CHUNK_EPISODES, else `auto`).
        modulation: for neuromodulated rules (`neuromod`, `retroactive`), the network
            emits `M(t) = tanh(y(t) @ w_m + b_m)` (`modulator`, a learned read-out) that
            drives the update: `network` (one M per episode) or `neuron` (one per
            postsynaptic neuron); `none` for the other rules.
        **plastic: the arguments of `PlasticWeights` (rule, eta, alpha_mode, ...).
    """

    def __init__(self, n: int, *, input_mode: str = "add", segment_steps: int = 0, modulation: str = "none",
                 impl: str = "fused", fused_backend: str = "auto",
                 chunk_episodes: int | str | None = None, checkpoint_every: int | None = None, **plastic):
        super().__init__()
        if checkpoint_every is not None:  # its name before segment_steps
            warnings.warn("checkpoint_every is deprecated: use segment_steps", DeprecationWarning, stacklevel=2)
            segment_steps = checkpoint_every
        impl = deprecated_value("impl", impl)
        check_choice("input mode", input_mode, INPUT_MODES)
        check_choice("modulation", modulation, MODULATIONS)
        check_choice("implementation", impl, IMPLS)
        check_choice("fused backend", fused_backend, FUSED_BACKENDS)
        check_positive("segment_steps", segment_steps, allow_zero=True)
        if chunk_episodes not in (None, "auto"):
            check_positive("chunk_episodes", chunk_episodes, allow_zero=True)
        self.chunk_episodes = chunk_episodes
        self.n, self.input_mode, self.segment_steps = n, input_mode, segment_steps
        self.impl, self.fused_backend = impl, fused_backend
        self.plastic = PlasticWeights(n, n, **plastic)
        if self.plastic.rule.modulated != (modulation != "none"):
            raise ConfigError(f"rule {self.plastic.rule.name!r} with modulation {modulation!r}: neuromodulated "
                              "rules (neuromod, retroactive) need modulation 'network' or 'neuron', the others 'none'")
        self.modulation = modulation
        self.modulator = None if modulation == "none" else nn.Linear(n, 1 if modulation == "network" else n)
        self.fused = impl == "fused" and fused_supports(self.plastic.rule)

    def _modulator_weights(self) -> tuple[Tensor, Tensor] | None:
        """The read-out of M(t) as the fused path takes it: (w_mod `[N, k]`, b_mod `[k]`)."""
        return None if self.modulator is None else (self.modulator.weight.t(), self.modulator.bias)

    def modulate(self, y: Tensor) -> Tensor | None:
        """`M(t) = tanh(y(t) @ w_m + b_m)`: `[B, 1]` or `[B, N]`; None without modulation."""
        weights = self._modulator_weights()
        return None if weights is None else modulation_signal(y, *weights)

    def initial_state(self, batch: int, *, device=None, dtype=None) -> PlasticState:
        """Zero activity and zero traces: the state at the start of an episode."""
        p = self.plastic
        device = device or p.w.device
        dtype = dtype or p.w.dtype
        y = torch.zeros(batch, self.n, device=device, dtype=dtype)
        return PlasticState(y, p.zero_traces(batch, device=device, dtype=dtype))

    def forward(self, inputs: Tensor, state: PlasticState | None = None,
                reset: Tensor | None = None) -> tuple[Tensor, PlasticState]:
        """inputs `[B, T, N]`, optional state and reset `[B, T]` ->
        (activities `[B, T, N]`, final state)."""
        _check_sequence("inputs", inputs, self.n)
        batch, steps, _ = inputs.shape
        _check_reset(reset, batch, steps)
        fresh = state is None
        if fresh:
            state = self.initial_state(batch, device=inputs.device, dtype=inputs.dtype)
        if not isinstance(state, tuple) or len(state) != 2:
            raise ShapeError("state must be (y [B, N], traces): pass the state the layer returned or None")
        state = PlasticState(state[0], tuple(state[1]))
        if tuple(state.y.shape) != (batch, self.n):
            raise ShapeError(f"state.y has shape {tuple(state.y.shape)}, expected {(batch, self.n)} [B, N]")
        self.plastic.check_traces(state.traces, batch)
        if self.fused:
            return self._fused(inputs, state, reset, fresh)
        seg = self.segment_steps if (self.segment_steps and torch.is_grad_enabled()) else steps
        outputs = []
        y, traces = state
        for start in range(0, steps, seg):
            stop = min(start + seg, steps)
            chunk = inputs[:, start:stop]
            chunk_reset = None if reset is None else reset[:, start:stop]
            if seg < steps:
                out, y, *traces = checkpoint(self._segment, chunk, chunk_reset, y, *traces,
                                             use_reentrant=False)
            else:
                out, y, *traces = self._segment(chunk, chunk_reset, y, *traces)
            outputs.append(out)
        return torch.cat(outputs, 1), PlasticState(y, tuple(traces))

    def _fused(self, inputs: Tensor, state: PlasticState, reset: Tensor | None,
               fresh: bool) -> tuple[Tensor, PlasticState]:
        p = self.plastic
        # A fresh episode starts from zero traces: None spares the kernels a pass over zeros.
        traces0 = (None,) if fresh else state.traces
        out, (y, *traces) = plastic_rnn_fused(inputs, p.w, p.alpha, p.eta, rule=p.rule,
                                              input_mode=self.input_mode, clip=p.clip,
                                              initial_state=(state.y, *traces0), reset=reset,
                                              segment_steps=self.segment_steps, backend=self.fused_backend,
                                              chunk_episodes=self.chunk_episodes, modulator=self._modulator_weights())
        return out, PlasticState(y, tuple(traces))

    def extra_repr(self) -> str:
        impl = "fused" if self.fused else "autograd"
        return f"n={self.n}, input_mode={self.input_mode}, impl={impl}, modulation={self.modulation}"

    def _segment(self, inputs: Tensor, reset: Tensor | None, y: Tensor, *traces: Tensor):
        eta = self.plastic.eta
        outputs = []
        for t in range(inputs.shape[1]):
            same_episode = _same_episode_mask(reset, t, inputs.dtype)
            if same_episode is not None:
                y, traces = y * same_episode, _mask_traces(traces, same_episode)
            post = drive_neurons(self.plastic.project(y, traces[0]), inputs[:, t], self.input_mode)
            traces = self.plastic.update(traces, y, post, self.modulate(post), eta=eta)
            y = post
            outputs.append(y)
        return (torch.stack(outputs, 1), y, *traces)
