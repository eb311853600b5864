"""Plastic and baseline layers; state is passed in and returned.

    plastic.py       PlasticWeights (w, alpha, eta and the rule), PlasticLinear, PlasticRNN
    inputs.py        how the input enters a recurrent network (`add` or `clamp`)
    fused.py         the fused path: one autograd node per sequence, Hebb rebuilt by inverting the rule;
                     kernels in torch ops, C++ (fused_cpu.cpp) and Triton (fused_triton.py)
    baselines.py     RecurrentNet (no plasticity), LSTMNet
    naive.py         step-by-step one-episode references the tests compare every path with

Shapes: activations `[B, T, N]`, Hebb `[B, N_in, N_out]`, reset masks `[B, T]`.
May import: `plasticity.errors`, `plasticity.rules`, `plasticity.config.renames`.
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
