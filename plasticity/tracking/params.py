"""Which config fields describe a run: the params a tracking store should show.

A flat task config carries every field of every model (`hidden` for the LSTM, `rule`
and `eta` for the plastic networks, `modulation` for the neuromodulated ones) and the
run's bookkeeping (`out`, a folder). `applicable_params(cfg)` keeps the fields that
change what this run computes, so that a run's params never show a setting its model
ignores.
"""

from __future__ import annotations

from typing import Any

from plasticity.rules import RULES

PLASTIC_FIELDS = ("rule", "eta", "eta_mode", "learn_eta", "alpha_mode", "clip", "impl", "segment_steps")
"""Fields only networks with plastic connections read."""
BOOKKEEPING = ("out",)
"""Where files go, not what is computed (a sweep's trials write into Ray's folders)."""


def applicable_params(cfg) -> dict[str, Any]:
    """`cfg`'s fields (as `to_dict()`), less those its model and task do not read."""
    params = cfg.to_dict()
    drop = set(BOOKKEEPING)
    model = params.get("model")
    if not cfg.plastic:
        drop.update(PLASTIC_FIELDS)
    if params.get("task") == "maze":
        # The maze agents are stepped one step at a time with --hidden neurons, plainly.
        drop.update({"extra_neurons", "impl", "segment_steps"})
        if not (model in RULES and RULES[model].modulated):
            drop.add("modulation")
    else:
        if model != "lstm":
            drop.add("hidden")  # LSTM units; the recurrent networks have one neuron per input + extra
        if model == "lstm" or params.get("task") == "omniglot":
            drop.add("extra_neurons")
        if params.get("task") == "omniglot":
            drop.update({"impl", "segment_steps"})  # a plastic read-out layer, not the recurrent network
    return {k: v for k, v in params.items() if k not in drop}
