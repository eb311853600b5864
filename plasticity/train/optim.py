"""The optimiser every training loop uses: Adam with eta in its own parameter group.

    optimizer = make_optimizer(model, cfg)   # groups "weights" (--lr) and "eta" (--eta-lr)

eta is trained through its unconstrained parameter `eta_logit` (see
`plasticity.nn.plastic`), whose natural step size differs from the weights': one Adam
step moves a parameter by about its learning rate, which for `eta_logit` is a change of
eta *relative* to eta. `--eta-lr` sets that rate; by default it is `--lr` times
`ETA_LR_RATIO`, chosen by measurement on the reference pattern preset (README).
"""

from __future__ import annotations

import torch

ETA_LR_RATIO = 1.0
"""Default --eta-lr as a multiple of --lr (measured: README, "eta's learning rate")."""
ETA_PARAM = "eta_logit"
"""Name of the parameter that holds eta (`PlasticWeights.eta_logit`)."""


def eta_lr(cfg) -> float:
    """The learning rate of eta's group: `cfg.eta_lr`, else `cfg.lr * ETA_LR_RATIO`."""
    return cfg.eta_lr if cfg.eta_lr is not None else cfg.lr * ETA_LR_RATIO


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Adam:
    """Adam over the model's trained parameters: group `weights` at `cfg.lr`, and group
    `eta` (every `eta_logit`, if any is trained) at `eta_lr(cfg)`."""
    weights, etas = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (etas if name.rsplit(".", 1)[-1] == ETA_PARAM else weights).append(param)
    groups = [{"params": weights, "lr": cfg.lr, "name": "weights"},
              {"params": etas, "lr": eta_lr(cfg), "name": "eta"}]
    return torch.optim.Adam([g for g in groups if g["params"]])
