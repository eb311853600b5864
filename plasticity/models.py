"""Build the network named by a config, behind one interface.

`SequenceModel.forward(inputs [B, T, n_io], state=None, reset=None) -> (outputs
[B, T, n_io], state)`. Recurrent cores with more neurons than inputs (extra hidden
neurons) get zero input on the extra neurons; the outputs are the first n_io neurons.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from plasticity.nn import LSTMNet, PlasticRNN, RecurrentNet


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
        core = PlasticRNN(n, rule=cfg.rule, eta=cfg.eta, eta_mode=cfg.eta_mode, learn_eta=cfg.learn_eta,
                          alpha_mode=cfg.alpha_mode, clip=cfg.clip, init_std=cfg.init_std,
                          checkpoint_every=cfg.recompute_every,
                          input_mode=getattr(cfg, "input_mode", "add"))
    elif cfg.model == "rnn":
        core = RecurrentNet(n, init_std=cfg.init_std, input_mode=getattr(cfg, "input_mode", "add"))
    else:
        core = LSTMNet(n_io, cfg.hidden)
    return SequenceModel(core, n_io)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
