"""Advantage actor-critic (A2C) on the maze: the `a2c` algorithm (`A2CAlgorithm`).

Each optimiser step runs `batch_size` maze episodes at once (`BatchedMaze`) for
`episode_steps` steps, the recurrent agent starting from a zero state (and zero Hebb)
in every episode, then backpropagates through the whole episodes:

    R_t = r_t + gamma * R_{t+1}              (discounted return, per episode, no bootstrap)
    A_t = R_t - V_t                          (each episode's own value baseline)
    loss = mean_{b,t}( -log pi(a_t) * stop_grad(A_t) + value_weight * A_t^2
                       - entropy_weight * H(pi_t) )

with Adam and gradient-norm clipping (`grad_clip`). Every `eval_every` episodes the
agent plays a fixed set of held-out episodes (layouts and action draws from
`seed + EVAL_SEED_OFFSET`) and `report(step, metrics, files)` is called with metrics
`charts/episodic_return` (mean training return since the last report), `eval/return`,
`eval/goals`, `eval/loss` (= -eval/return, what sweeps minimise), `losses/*`, `perf/*`,
`plastic/*`, and files `trajectory` (figure of one held-out episode), `trajectory_gif`
and `checkpoint`. The run folder also gets `learning_curve.png` at the end. The run
around it (folder, checkpoints, resume, reports) is `plasticity.train.run.train`'s:

    from plasticity.config import preset
    from plasticity.train import train
    result = train(preset("maze", "small", model="neuromod"), report=print)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from plasticity.agents import ActorCritic
from plasticity.config import check_evaluation
from plasticity.envs.maze import BatchedMaze, MazeLayout, MazeSpec
from plasticity.envs.render import Trajectory, save_gif, trajectory_figure
from plasticity.errors import check_positive
from plasticity.models import count_parameters
from plasticity.plots import learning_curve_png, save_figure
from plasticity.tasks.maze import MazeTask
from plasticity.train.algorithm import register_algorithm
from plasticity.train.common import (
    EVAL_SEED_OFFSET,
    eval_progress,
    model_from_checkpoint,
    plastic_summary,
    resolve_device,
)


@dataclass
class Rollout:
    """B episodes played by the agent; every tensor is `[B, T]` (positions `[T, B, 2]`)."""

    log_probs: Tensor
    entropy: Tensor
    values: Tensor
    rewards: Tensor
    found: Tensor
    arrived: Tensor | None = None
    pos: Tensor | None = None


def rollout(agent: ActorCritic, env: BatchedMaze, layout: MazeLayout, generator: torch.Generator, *,
            record: bool = False) -> Rollout:
    """Play `layout`'s episodes to the end, sampling actions from the policy with `generator`."""
    obs, state = env.reset(layout), None
    log_probs, entropy, values, rewards, found, arrived, pos = [], [], [], [], [], [], []
    for _ in range(env.spec.steps):
        logits, value, state = agent(obs, state)
        logp = torch.log_softmax(logits, -1)
        probs = logp.exp()
        action = torch.multinomial(probs.detach(), 1, generator=generator)
        log_probs.append(logp.gather(1, action).squeeze(1))
        entropy.append(-(probs * logp).sum(-1))
        values.append(value)
        goals_before = env.found
        obs, reward, _ = env.step(action.squeeze(1))
        rewards.append(reward)
        found.append(env.found > goals_before)
        if record:
            arrived.append(env.arrived.clone())
            pos.append(env.pos.clone())
    stack = partial(torch.stack, dim=1)
    return Rollout(stack(log_probs), stack(entropy), stack(values), stack(rewards), stack(found),
                   torch.stack(arrived) if record else None, torch.stack(pos) if record else None)


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """`R_t = r_t + gamma * R_{t+1}` for every episode: rewards `[B, T]` -> returns `[B, T]`."""
    running = torch.zeros_like(rewards[:, 0])
    out = []
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        out.append(running)
    return torch.stack(out[::-1], 1)


def a2c_loss(log_probs: Tensor, entropy: Tensor, values: Tensor, rewards: Tensor, *, gamma: float,
             value_weight: float, entropy_weight: float) -> tuple[Tensor, dict[str, float]]:
    """The A2C loss of the module docstring; all inputs `[B, T]`. Each episode's advantage
    uses its own values (Backpropamine's code used element 0's baseline for the batch).
    Returns (loss, `{"policy_loss", "value_loss", "entropy"}` as floats)."""
    advantage = discounted_returns(rewards, gamma) - values
    policy_loss = -(log_probs * advantage.detach()).mean()
    value_loss = advantage.pow(2).mean()
    mean_entropy = entropy.mean()
    loss = policy_loss + value_weight * value_loss - entropy_weight * mean_entropy
    parts = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": mean_entropy.item()}
    return loss, parts


@torch.no_grad()
def evaluate(agent: ActorCritic, spec: MazeSpec, layouts: list[MazeLayout], device, seed: int,
             progress: bool = False) -> tuple[dict[str, float], Trajectory]:
    """Mean return (and its spread over episodes), goals found and wall bumps per episode
    over `layouts`; actions are
    sampled with a generator reseeded to `seed`, so the result depends on the weights
    only. Also returns the first episode's trajectory. `progress`: a bar with the time
    left on a terminal, once the evaluation takes a while."""
    agent.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    returns, goals, bumps, first = [], [], [], None
    bar = eval_progress(sum(len(layout.goal) for layout in layouts), progress)
    for layout in layouts:
        env = BatchedMaze(spec, len(layout.goal), device)
        roll = rollout(agent, env, layout, g, record=first is None)
        returns.append(roll.rewards.sum(1).cpu())
        goals.append(roll.found.sum(1).cpu())
        bumps.append((roll.rewards < 0).sum(1).cpu())
        if first is None:
            first = Trajectory(tuple(env.goal[0].tolist()), roll.arrived[:, 0].cpu().numpy(),
                               roll.pos[:, 0].cpu().numpy(), roll.found[0].cpu().numpy(),
                               roll.rewards[0].cpu().numpy())
        bar.update(len(layout.goal))
    bar.close()
    agent.train()
    returns = torch.cat(returns).double()
    metrics = {"return": returns.mean().item(), "return_std": returns.std(correction=0).item(),
               "goals": torch.cat(goals).double().mean().item(), "wall_bumps": torch.cat(bumps).double().mean().item()}
    metrics["loss"] = -metrics["return"]
    return metrics, first


def _trajectory_files(spec: MazeSpec, traj: Trajectory, folder: Path, title: str,
                      name: str = "trajectory") -> dict[str, Path]:
    png, gif = folder / f"{name}.png", folder / f"{name}.gif"
    save_figure(trajectory_figure(spec, traj, title), png)
    save_gif(spec, traj, gif)
    return {"trajectory": png, "trajectory_gif": gif}


def evaluate_checkpoint(path: str | Path, config_cls, *, episodes: int, seed: int, figure: Path,
                        device: str = "cpu", split: str = "test", data_dir: str | None = None,
                        progress: bool = True) -> dict:
    """Play `episodes` fresh episodes (layouts and actions from `seed`) with a checkpoint's
    agent; write the first episode's trajectory figure to `figure` and a GIF beside it.
    The maze has no data: every episode is drawn fresh, so `split` must be `test` (and
    `data_dir` is not read).

    Returns `{"config", "episode", "metrics", "figure"}`."""
    check_positive("episodes", episodes)
    dev = resolve_device(device)
    agent, cfg, ckpt = model_from_checkpoint(path, config_cls, device=str(dev), split=split)
    check_evaluation(cfg, episodes, "--episodes")
    task = MazeTask(cfg)
    spec = task.spec
    metrics, traj = evaluate(agent, spec, task.heldout_layouts(episodes, seed), dev, seed, progress=progress)
    metrics["return_ci95"] = 1.96 * metrics["return_std"] / episodes ** 0.5
    figure = Path(figure)
    save_figure(trajectory_figure(spec, traj, f"maze/{cfg.model}, after {ckpt['episode']} episodes"), figure)
    save_gif(spec, traj, figure.with_suffix(".gif"))
    return {"config": cfg, "episode": ckpt["episode"], "metrics": metrics, "figure": figure}


@register_algorithm
class A2CAlgorithm:
    """A2C on the maze (`plasticity.train.algorithm.Algorithm`): batched episodes played
    by the agent, the loss of the module docstring, held-out layouts for evaluation."""

    name = "a2c"

    def __init__(self, cfg, device: torch.device, progress: bool = False):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.task = MazeTask(cfg)
        self.spec = self.task.spec
        self.model: ActorCritic = self.task.build_model(cfg).to(device)
        # Layouts are drawn on the CPU, actions where the agent runs; both are in the checkpoint.
        self.layouts = torch.Generator().manual_seed(cfg.seed)
        self.actions = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.heldout = self.task.heldout_layouts(cfg.eval_episodes, cfg.seed + EVAL_SEED_OFFSET)
        self.envs: dict[int, BatchedMaze] = {}

    def prepare(self) -> None:
        """Nothing to build: the agent runs step-by-step autograd."""

    def step(self, episodes: int):
        env = self.envs.get(episodes) or self.envs.setdefault(episodes, BatchedMaze(self.spec, episodes, self.device))
        roll = rollout(self.model, env, self.task.sample(episodes, self.layouts), self.actions)
        cfg = self.cfg
        loss, parts = a2c_loss(roll.log_probs, roll.entropy, roll.values, roll.rewards, gamma=cfg.gamma,
                               value_weight=cfg.value_weight, entropy_weight=cfg.entropy_weight)
        stats = {"train/loss": loss.item(), "charts/episodic_return": roll.rewards.sum(1).mean().item(),
                 "charts/goals": roll.found.sum(1).float().mean().item(),
                 **{f"losses/{k}": v for k, v in parts.items()}}
        return loss, stats

    def evaluate(self, episode: int, run_dir: Path):
        scores, traj = evaluate(self.model, self.spec, self.heldout, self.device, self.cfg.seed + EVAL_SEED_OFFSET,
                                progress=self.progress)
        metrics = {f"eval/{k}": v for k, v in scores.items()}
        metrics.update(plastic_summary(self.model, self.cfg))
        metrics["model/params"] = count_parameters(self.model)
        files = _trajectory_files(self.spec, traj, run_dir, f"maze/{self.cfg.model}, after {episode} episodes")
        return metrics, files

    def generators(self) -> dict[str, torch.Generator]:
        return {"generator": self.layouts, "action_generator": self.actions}

    def checkpoint_extra(self) -> dict:
        return {}

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"ret": f"{metrics.get('charts/episodic_return', float('nan')):.1f}",
                "eval": f"{metrics['eval/return']:.1f}"}

    def finish(self, history: list[dict], run_dir: Path) -> None:
        learning_curve_png(history, run_dir, ("charts/episodic_return", "eval/return"),
                           ylabel="reward per episode", logy=False)

    evaluate_checkpoint = staticmethod(evaluate_checkpoint)


__all__ = ["A2CAlgorithm", "Rollout", "a2c_loss", "discounted_returns", "evaluate", "evaluate_checkpoint", "rollout"]
