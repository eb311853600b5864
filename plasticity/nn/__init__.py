"""Plastic and baseline layers; state is passed in and returned.

Shapes: activations `[B, T, N]`, Hebb `[B, N_in, N_out]`, reset masks `[B, T]`.
"""

from plasticity.nn.baselines import LSTMNet, RecurrentNet
from plasticity.nn.plastic import (
    ALPHA_MODES,
    ETA_MODES,
    IMPLS,
    INPUT_MODES,
    MODULATIONS,
    PlasticLinear,
    PlasticRNN,
    PlasticState,
    PlasticWeights,
    drive_neurons,
)

__all__ = ["ALPHA_MODES", "ETA_MODES", "IMPLS", "INPUT_MODES", "MODULATIONS", "LSTMNet", "PlasticLinear", "PlasticRNN",
           "PlasticState", "PlasticWeights", "RecurrentNet", "drive_neurons"]
