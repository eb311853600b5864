"""The plasticity-rule interface and the registry that layers look rules up in.

A rule is a pure function of tensors: it takes the current traces (a tuple whose first
element is Hebb `[B, N_in, N_out]`), the presynaptic activity `pre` `[B, N_in]`, the
postsynaptic activity `post` `[B, N_out]`, the rate `eta` (a scalar tensor or
`[N_in, N_out]`) and an optional modulatory signal, and returns the new traces.
Layers only ever call `rule.update`, so a new rule plugs in by registering itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from plasticity.errors import check_choice

Traces = tuple[Tensor, ...]
UpdateFn = Callable[..., Traces]


@dataclass(frozen=True)
class Elementwise:
    """A rule's update of one Hebb element, written once, from which every fast path is
    derived (the batched torch rule, the fused torch-op / C++ / Triton kernels).

    Each field is a *module-level* function `f(h, pre, post, eta, mod)` whose body is a
    single `return` of plain arithmetic (`+ - * /`, unary `-`, float literals) on its
    arguments, so the same function runs on broadcast torch tensors, compiles as a Triton
    `@triton.jit` function and translates to a C++ expression. `h` is Hebb_ij(t), `pre`
    is pre_i, `post` is post_j, `eta` the rate (one value or eta_ij), `mod` the
    modulatory signal M_j(t) of a neuromodulated rule (one value per episode or per
    postsynaptic neuron; the other rules take it and do not read it)."""

    update: Callable
    """Hebb_ij(t+1) before clipping."""
    inverse: Callable
    """Hebb_ij(t) rebuilt from Hebb_ij(t+1) (first argument) and the same pre, post, eta."""
    d_h: Callable
    """d Hebb(t+1) / d Hebb(t)."""
    d_pre: Callable
    """d Hebb(t+1) / d pre."""
    d_post: Callable
    """d Hebb(t+1) / d post."""
    d_eta: Callable
    """d Hebb(t+1) / d eta."""
    d_mod: Callable | None = None
    """d Hebb(t+1) / d mod: needed by neuromodulated rules only (None: `update` does not read `mod`)."""


@dataclass(frozen=True)
class Elementwise2:
    """The elementwise form of a rule that carries a second trace `e` beside Hebb `h` (an
    eligibility trace), written once like `Elementwise`: every function is
    `f(h, e, pre, post, eta, mod)`, with the same subset. There is no inverse: the fused
    path keeps one exact state (h, e) every few steps and recomputes the others from it
    (`update` is elementwise, so the recomputed states are the forward pass's, bit for bit).
    Clipping applies to `h` only."""

    update: Callable
    """h_ij(t+1) before clipping."""
    update_e: Callable
    """e_ij(t+1)."""
    d_h: Callable
    """d h(t+1) / d h(t)."""
    d_e: Callable
    """d h(t+1) / d e(t)."""
    d_pre: Callable
    """d h(t+1) / d pre."""
    d_post: Callable
    """d h(t+1) / d post."""
    d_eta: Callable
    """d h(t+1) / d eta."""
    e_d_h: Callable
    """d e(t+1) / d h(t)."""
    e_d_e: Callable
    """d e(t+1) / d e(t)."""
    e_d_pre: Callable
    """d e(t+1) / d pre."""
    e_d_post: Callable
    """d e(t+1) / d post."""
    e_d_eta: Callable
    """d e(t+1) / d eta."""
    d_mod: Callable | None = None
    """d h(t+1) / d mod (neuromodulated rules only)."""
    e_d_mod: Callable | None = None
    """d e(t+1) / d mod (neuromodulated rules only)."""


@dataclass(frozen=True)
class Rule:
    """A registered plasticity rule."""

    name: str
    """Name used on the command line and in configs (`--rule NAME`)."""
    update: UpdateFn
    """`update(traces, pre, post, *, eta, clip=None, mod=None) -> traces`."""
    traces: tuple[str, ...] = ("hebb",)
    """Names of the state tensors the rule carries; the first is always Hebb."""
    modulated: bool = False
    """True if the rule needs a modulatory signal `mod` from the network."""
    elementwise: Elementwise | Elementwise2 | None = None
    """The rule's elementwise form (`Elementwise` for Hebb alone, `Elementwise2` for Hebb and
    a second trace); None: no fast path."""

    @property
    def invertible(self) -> bool:
        """True if `traces(t)` can be rebuilt from `traces(t+1)` by the form's `inverse` (the
        fused path's backward; two-trace forms recompute their states instead)."""
        return isinstance(self.elementwise, Elementwise)


RULES: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    """Add `rule` to the registry (names must be unique)."""
    if rule.name in RULES:
        raise ValueError(f"a rule named {rule.name!r} is already registered")
    RULES[rule.name] = rule
    return rule


def rule_names(modulated: bool | None = None) -> tuple[str, ...]:
    """Names of the registered rules, in registration order: all of them, or only those
    that need (`True`) or do not need (`False`) a modulatory signal. A network without a
    neuromodulator (the `plastic` model) runs the `modulated=False` ones; a neuromodulated
    rule runs only in the network that emits its M(t) (the maze's model of its name)."""
    return tuple(name for name, rule in RULES.items() if modulated is None or rule.modulated == modulated)


def get_rule(name: str) -> Rule:
    """Look a rule up by name, with a one-line error listing the known rules."""
    # The plain rules first, then the neuromodulated ones (registration order within each).
    check_choice("plasticity rule", name, sorted(RULES, key=lambda n: RULES[n].modulated))
    return RULES[name]


def apply_elementwise(fn: Callable, hebb: Tensor, pre: Tensor, post: Tensor, eta: Tensor | None,
                      mod: Tensor | float = 0.0) -> Tensor:
    """Apply an elementwise rule function to a batch: hebb `[B, N_in, N_out]`, pre `[B, N_in]`,
    post `[B, N_out]`, eta `[]` or `[N_in, N_out]`, mod `[B, 1, 1 or N_out]` (or a number:
    unmodulated rules do not read it) -> `[B, N_in, N_out]`."""
    return fn(hebb, pre.unsqueeze(-1), post.unsqueeze(-2), eta, mod)


def outer(pre: Tensor, post: Tensor) -> Tensor:
    """Batched outer product: `[B, N_in] x [B, N_out] -> [B, N_in, N_out]`."""
    return pre.unsqueeze(-1) * post.unsqueeze(-2)


def maybe_clip(hebb: Tensor, clip: float | None) -> Tensor:
    """Clamp Hebb to `[-clip, clip]` when a clip value is given."""
    return hebb if clip is None else hebb.clamp(-clip, clip)
