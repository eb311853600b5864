"""Actor-critic agents for the RL tasks: a recurrent core (plastic, neuromodulated or not)
between an input layer and policy and value read-outs, stepped one time step at a time.

    agent = build_agent(cfg, n_obs=16, n_actions=4)
    logits, value, state = agent(obs)           # obs [B, n_obs] -> [B, A], [B], state
    logits, value, state = agent(obs2, state)   # next step of the same episodes

`x(t) = W_in obs(t) + b_in` is added to the core's pre-activation (`input_mode="add"`),
so `h(t) = tanh(h(t-1) @ (w + alpha * Hebb) + x(t))`; `logits = W_pi h(t)`,
`value = W_v h(t)`. For the neuromodulated models the core also emits M(t) from h(t).

May import: plasticity.errors, plasticity.rules, plasticity.nn, torch
"""

from __future__ import annotations

from torch import Tensor, nn

from plasticity.nn import PlasticRNN, PlasticWeights, RecurrentNet
from plasticity.rules import get_rule


class ActorCritic(nn.Module):
    """A recurrent core with an input layer, a policy head and a value head."""

    def __init__(self, core: nn.Module, n_obs: int, n_actions: int):
        super().__init__()
        self.core = core
        self.encoder = nn.Linear(n_obs, core.n)
        self.policy = nn.Linear(core.n, n_actions)
        self.value = nn.Linear(core.n, 1)

    def forward(self, obs: Tensor, state=None) -> tuple[Tensor, Tensor, object]:
        """obs `[B, n_obs]`, the core's state (None at the start of the episodes) ->
        (action logits `[B, A]`, value `[B]`, new state)."""
        h, state = self.core(self.encoder(obs).unsqueeze(1), state)
        h = h.squeeze(1)
        return self.policy(h), self.value(h).squeeze(-1), state


def build_agent(cfg, n_obs: int, n_actions: int) -> ActorCritic:
    """The agent named by `cfg.model` with `cfg.hidden` recurrent neurons."""
    if cfg.model == "rnn":
        core = RecurrentNet(cfg.hidden, init_std=cfg.init_std)
    else:
        modulation = cfg.modulation if get_rule(cfg.rule).modulated else "none"
        # Stepped one step at a time: nothing to fuse.
        core = PlasticRNN(cfg.hidden, modulation=modulation, impl="autograd", **PlasticWeights.options(cfg))
    return ActorCritic(core, n_obs, n_actions)
