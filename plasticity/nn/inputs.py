"""How a recurrent network's input enters it: the one definition every path uses
(the plastic layers, the fused kernels' torch ops, the baselines and the naive references).

    add    `y = tanh(recurrent + x)`: the input is added to the pre-activation (patterns, maze)
    clamp  `y = x` where `x != 0`, else `tanh(recurrent)`: inputs clamp their neurons (images)
"""

from __future__ import annotations

import torch
from torch import Tensor

INPUT_MODES = ("add", "clamp")


def drive_neurons(recurrent: Tensor, x: Tensor, input_mode: str) -> Tensor:
    """The new activity from the recurrent pre-activation `recurrent` and the input `x`
    (same shape), under `input_mode` (`add` or `clamp`)."""
    if input_mode == "add":
        return torch.tanh(recurrent + x)
    return torch.where(x != 0, x, torch.tanh(recurrent))


def drive_derivative(post: Tensor, x: Tensor, input_mode: str) -> Tensor:
    """d post / d recurrent, from the activity `post` that `drive_neurons` returned."""
    d = 1 - post * post
    return d if input_mode == "add" else d.masked_fill(x != 0, 0)
