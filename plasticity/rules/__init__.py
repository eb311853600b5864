"""Plasticity rules as pure batched tensor functions, behind a registry.

    from plasticity.rules import get_rule
    rule = get_rule("oja")
    (hebb,) = rule.update((hebb,), pre, post, eta=eta, clip=1.0)

The maths is in `README.md` beside this file; `naive.py` holds the references. A rule
is defined once, in its own file (`hebb.py`, `oja.py`, `neuromod.py`, `retroactive.py`): its
update, its inverse and its elementwise form (`base.Elementwise`; `base.Elementwise2` for
two traces), from which the fused kernels are built (`elementwise.py` writes the C++).

May import: plasticity.errors, torch
"""

from plasticity.rules.base import (
    RULES,
    Elementwise,
    Elementwise2,
    Rule,
    Traces,
    get_rule,
    outer,
    register,
    rule_names,
)
from plasticity.rules.hebb import HEBB, hebb_update
from plasticity.rules.neuromod import NEUROMOD, neuromod_update
from plasticity.rules.oja import OJA, oja_update
from plasticity.rules.retroactive import RETROACTIVE, retroactive_update

__all__ = ["RULES", "Elementwise", "Elementwise2", "Rule", "Traces", "get_rule", "register", "outer", "rule_names",
           "HEBB", "OJA", "hebb_update", "oja_update",
           "NEUROMOD", "RETROACTIVE", "neuromod_update", "retroactive_update"]
