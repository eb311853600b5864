"""The optimiser every training loop uses: Adam with eta in its own parameter group.

    optimizer = make_optimizer(model, cfg)   # groups "weights" (--lr) and "eta" (--eta-lr)
    set_learning_rates(optimizer, cfg, episode)   # --lr-schedule, before each step

eta is trained through its unconstrained parameter `eta_logit` (see
`plasticity.nn.plastic`), whose natural step size differs from the weights': one Adam
step moves a parameter by about its learning rate, which for `eta_logit` is a change of
eta *relative* to eta. `--eta-lr` sets that rate; by default it is `--lr` times
`ETA_LR_RATIO`, chosen by measurement on the reference pattern preset (README).
"""

from __future__ import annotations

import math

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
    rates = base_learning_rates(cfg)
    groups = [{"params": weights, "lr": rates["weights"], "name": "weights"},
              {"params": etas, "lr": rates["eta"], "name": "eta"}]
    return torch.optim.Adam([g for g in groups if g["params"]])


def base_learning_rates(cfg) -> dict[str, float]:
    """Each parameter group's learning rate before any schedule: --lr and eta's."""
    return {"weights": cfg.lr, "eta": eta_lr(cfg)}


def lr_factor(cfg, episode: int) -> float:
    """The learning rates at `episode` as a fraction of --lr / --eta-lr: 1 for the constant
    schedule; cosine: from 1 at episode 0 to --lr-final at --episodes (PyTorch's
    CosineAnnealingLR with T_max = episodes). A function of the episode alone, so a resumed
    run continues the same schedule."""
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(max(episode / cfg.episodes, 0.0), 1.0)
    return cfg.lr_final + (1.0 - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg, episode: int) -> None:
    """Set each group's learning rate for the step that starts at `episode`."""
    factor, base = lr_factor(cfg, episode), base_learning_rates(cfg)
    for group in optimizer.param_groups:
        group["lr"] = base[group["name"]] * factor
