"""Non-plastic baselines with the same interface as `PlasticRNN`.

    RecurrentNet  the same fully recurrent network with `alpha = 0` (only `w`)
    LSTMNet       an LSTM with a tanh read-out to the same N outputs

`forward(inputs [B, T, N], state=None, reset=None) -> (outputs [B, T, N], state)`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plasticity.errors import ShapeError, check_choice, check_positive
from plasticity.nn.inputs import INPUT_MODES, drive_neurons
from plasticity.nn.plastic import _check_reset, _check_sequence, _same_episode_mask


class RecurrentNet(nn.Module):
    """`y(t) = drive(y(t-1) @ w, x(t))`: the plastic network without plasticity."""

    def __init__(self, n: int, *, input_mode: str = "add", init_std: float = 0.01):
        super().__init__()
        check_positive("n", n)
        check_choice("input mode", input_mode, INPUT_MODES)
        self.n, self.input_mode = n, input_mode
        self.w = nn.Parameter(init_std * torch.randn(n, n))

    def initial_state(self, batch: int, *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.n, device=device or self.w.device, dtype=dtype or self.w.dtype)

    def forward(self, inputs: Tensor, state: Tensor | None = None,
                reset: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_sequence("inputs", inputs, self.n)
        batch, steps, _ = inputs.shape
        _check_reset(reset, batch, steps)
        y = self.initial_state(batch, device=inputs.device, dtype=inputs.dtype) if state is None else state
        if tuple(y.shape) != (batch, self.n):
            raise ShapeError(f"state has shape {tuple(y.shape)}, expected {(batch, self.n)} [B, N]")
        outputs = []
        for t in range(steps):
            same_episode = _same_episode_mask(reset, t, inputs.dtype)
            if same_episode is not None:
                y = y * same_episode
            y = drive_neurons(y @ self.w, inputs[:, t], self.input_mode)
            outputs.append(y)
        return torch.stack(outputs, 1), y


class LSTMNet(nn.Module):
    """An LSTM of `hidden` units reading the N inputs and writing N outputs through
    `tanh(Linear(h))`. State is `(h, c)`, each `[1, B, hidden]` as in `nn.LSTM`."""

    def __init__(self, n: int, hidden: int):
        super().__init__()
        check_positive("n", n)
        check_positive("hidden", hidden)
        self.n, self.hidden = n, hidden
        self.lstm = nn.LSTM(n, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, n)

    def forward(self, inputs: Tensor, state: tuple[Tensor, Tensor] | None = None,
                reset: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        _check_sequence("inputs", inputs, self.n)
        batch, steps, _ = inputs.shape
        _check_reset(reset, batch, steps)
        if reset is None:
            h, state = self.lstm(inputs, state)
        else:
            # nn.LSTM cannot reset mid-sequence: step it and mask the state.
            if state is None:
                zeros = inputs.new_zeros(1, batch, self.hidden)
                state = (zeros, zeros)
            hs = []
            for t in range(steps):
                same_episode = _same_episode_mask(reset, t, inputs.dtype).unsqueeze(0)
                state = (state[0] * same_episode, state[1] * same_episode)
                out, state = self.lstm(inputs[:, t:t + 1], state)
                hs.append(out)
            h = torch.cat(hs, 1)
        return torch.tanh(self.readout(h)), state
