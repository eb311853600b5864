"""Plastic and baseline layers; state is passed in and returned.

    plastic.py       PlasticWeights (w, alpha, eta and the rule), PlasticLinear, PlasticRNN
    inputs.py        how the input enters a recurrent network (`add` or `clamp`)
    fused/           the fused path: one autograd node per sequence, Hebb rebuilt by inverting the rule;
                     kernels in torch ops, C++ and Triton, one file per concern (see its __init__.py)
    baselines.py     RecurrentNet (no plasticity), LSTMNet
    naive.py         step-by-step one-episode references the tests compare every path with

Shapes: activations `[B, T, N]`, Hebb `[B, N_in, N_out]`, reset masks `[B, T]`.
Triton is imported by the Triton kernels' module (guarded: it may be missing), ninja by
the C++ build.

May import: plasticity.errors, plasticity.rules, plasticity.config.renames, torch, triton
May import in functions: ninja
"""

from plasticity.nn.baselines import LSTMNet, RecurrentNet
from plasticity.nn.inputs import INPUT_MODES, drive_neurons
from plasticity.nn.plastic import (
    ALPHA_MODES,
    ETA_MODES,
    IMPLS,
    MODULATIONS,
    PlasticLinear,
    PlasticRNN,
    PlasticState,
    PlasticWeights,
)

__all__ = ["ALPHA_MODES", "ETA_MODES", "IMPLS", "INPUT_MODES", "MODULATIONS", "LSTMNet", "PlasticLinear", "PlasticRNN",
           "PlasticState", "PlasticWeights", "RecurrentNet", "drive_neurons"]
