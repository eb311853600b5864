"""Build the network named by a config, behind one interface.

`SequenceModel.forward(inputs [B, T, n_io], state=None, reset=None) -> (outputs
[B, T, n_io], state)`. Recurrent cores with more neurons than inputs (extra hidden
neurons) get zero input on the extra neurons; the outputs are the first n_io neurons.

May import: plasticity.errors, plasticity.rules, plasticity.nn, torch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plasticity.nn import LSTMNet, PlasticLinear, PlasticRNN, PlasticWeights, RecurrentNet


class SequenceModel(nn.Module):
    def __init__(self, core: nn.Module, n_io: int):
        super().__init__()
        self.core, self.n_io = core, n_io
        self.n_core = core.n

    def forward(self, inputs: Tensor, state=None, reset: Tensor | None = None):
        pad = self.n_core - self.n_io
        if pad:
            inputs = F.pad(inputs, (0, pad))
        outputs, state = self.core(inputs, state, reset)
        return outputs[..., :self.n_io], state


def build_model(cfg, n_io: int) -> SequenceModel:
    """The plastic network, its non-plastic twin or an LSTM, for `n_io` inputs/outputs."""
    n = n_io + cfg.extra_neurons
    if cfg.model == "plastic":
        core = PlasticRNN(n, input_mode=getattr(cfg, "input_mode", "add"), segment_steps=cfg.segment_steps,
                          impl=cfg.impl, **PlasticWeights.options(cfg))
    elif cfg.model == "rnn":
        core = RecurrentNet(n, init_std=cfg.init_std, input_mode=getattr(cfg, "input_mode", "add"))
    else:
        core = LSTMNet(n_io, cfg.hidden)
    return SequenceModel(core, n_io)


class OmniglotNet(nn.Module):
    """The one-shot classifier of the paper: a conv embedding and a plastic read-out.

    Four 3x3 stride-2 conv layers (`channels` each, tanh, no padding: 31 -> 15 -> 7 -> 3
    -> 1) give an embedding `z` `[B, T, channels]`; a `PlasticLinear(channels, n_way)`
    with softmax outputs `softmax(z (w + alpha * Hebb) + label_gain * label)`. On the
    presentation steps the label drives the output to the one-hot class, so the
    Hebbian update binds the embedding to the label; at the query step the label is 0.

    `forward((images [B, T, 1, 31, 31], labels [B, T, n_way]), traces=None, reset=None)
    -> (probabilities [B, T, n_way], traces)`.
    """

    def __init__(self, cfg):
        super().__init__()
        layers, width = [], 1
        for _ in range(4):
            layers += [nn.Conv2d(width, cfg.channels, 3, stride=2), nn.Tanh()]
            width = cfg.channels
        self.embed = nn.Sequential(*layers, nn.Flatten())
        self.label_gain = cfg.label_gain
        self.plastic_out = PlasticLinear(cfg.channels, cfg.n_way, bias=False, activation=_softmax,
                                         **PlasticWeights.options(cfg))

    def forward(self, inputs: tuple[Tensor, Tensor], state=None, reset: Tensor | None = None):
        images, labels = inputs
        batch, steps = images.shape[:2]
        z = self.embed(images.flatten(0, 1)).reshape(batch, steps, -1)
        return self.plastic_out(z, state, drive=self.label_gain * labels, reset=reset)


def _softmax(x: Tensor) -> Tensor:
    return torch.softmax(x, -1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
