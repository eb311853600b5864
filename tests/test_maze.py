"""The maze environment: layout, view, walls, reward and teleport; the batched tensor
environment against the plain-Python gymnasium one; gymnasium's own checks."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from plasticity.envs.maze import ACTIONS, BatchedMaze, MazeEnv, MazeLayout, MazeSpec, draw_layout, render_frame
from plasticity.errors import ConfigError, PlasticityError, ShapeError

UP, DOWN, LEFT, RIGHT = range(4)
SPEC = MazeSpec(size=9, view=3, steps=20, goal_reward=10.0, wall_penalty=0.1)


def _cell(spec, cell) -> int:
    return int(np.flatnonzero((spec.free_cells() == cell).all(1))[0])


def _layout(spec, goal, teleports=()):
    """One episode with the goal at `goal` and teleport indices `teleports` (then zeros)."""
    tele = torch.zeros(1, spec.steps, dtype=torch.long)
    tele[0, :len(teleports)] = torch.tensor(teleports, dtype=torch.long)
    return MazeLayout(torch.tensor([_cell(spec, goal)]), tele)


def test_walls_border_pillars_and_free_centre():
    walls = SPEC.walls()
    assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
    assert walls[2, 2] and walls[2, 6] and walls[6, 4] and not walls[4, 4]  # centre pillar removed
    assert not walls[1, 2] and not walls[3, 3]
    assert len(SPEC.free_cells()) == 7 * 7 - 8  # interior minus 8 pillars


def test_view_and_observation_layout():
    env = BatchedMaze(SPEC, 1)
    obs = env.reset(_layout(SPEC, (7, 7)))
    # Start at the centre (4, 4): the 3x3 neighbourhood is free; bias 1, t/T 0, no reward, no action.
    assert obs[0].tolist() == [0.0] * 9 + [1.0, 0.0, 0.0] + [0.0] * 4
    for _ in range(3):
        obs, _, _ = env.step(torch.tensor([UP]))  # (3, 4) -> (2, 4) is a pillar -> blocked at (3, 4)
    assert env.pos[0].tolist() == [3, 4]
    # View of (3, 4), row-major: pillars at (2, 3)? no; (2, 4) yes; (4, 3), (4, 5)? no.
    assert obs[0, :9].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert obs[0, 9:12].tolist() == pytest.approx([1.0, 3 / SPEC.steps, -0.1])
    assert obs[0, 12:].tolist() == [1.0, 0.0, 0.0, 0.0]  # previous action: up


def test_corner_view_sees_the_border():
    env = MazeEnv(SPEC)
    env.reset(options={"layout": (_cell(SPEC, (7, 7)), [0] * SPEC.steps)})
    for a in (UP, LEFT, LEFT, LEFT, UP, UP):  # centre -> (1, 1) along free cells
        obs, *_ = env.step(a)
    assert env.pos == (1, 1)
    assert obs[:9].tolist() == [1, 1, 1, 1, 0, 0, 1, 0, 1]


def test_wall_bump_costs_and_does_not_move():
    env = BatchedMaze(SPEC, 1)
    env.reset(_layout(SPEC, (7, 7)))
    env.step(torch.tensor([UP]))
    _, reward, _ = env.step(torch.tensor([UP]))  # into the pillar at (2, 4)
    assert env.pos[0].tolist() == [3, 4] and reward.item() == pytest.approx(-0.1)
    _, reward, _ = env.step(torch.tensor([LEFT]))
    assert env.pos[0].tolist() == [3, 3] and reward.item() == 0.0


def test_goal_gives_reward_and_teleports_to_the_drawn_cell():
    # Goal right of the start; the k-th teleport index skips the goal cell in the free list.
    goal = (4, 5)
    g_index = _cell(SPEC, goal)
    teleports = [g_index, 0]  # first: the index just past the goal -> the free cell after it
    env = BatchedMaze(SPEC, 1)
    env.reset(_layout(SPEC, goal, teleports))
    obs, reward, _ = env.step(torch.tensor([RIGHT]))
    assert reward.item() == 10.0 and env.found.item() == 1
    assert env.arrived[0].tolist() == list(goal)
    assert env.pos[0].tolist() == SPEC.free_cells()[g_index + 1].tolist()
    assert obs[0, 11].item() == 10.0  # the reward is an input at the next step
    # Walk back to the goal from there and get teleported to the second destination.
    env2 = MazeEnv(SPEC)
    env2.reset(options={"layout": (g_index, teleports + [0] * (SPEC.steps - 2))})
    _, r, *_ = env2.step(RIGHT)
    assert r == 10.0 and env2.pos == tuple(SPEC.free_cells()[g_index + 1])


def test_episode_has_fixed_length():
    env = BatchedMaze(SPEC, 2)
    env.reset(draw_layout(SPEC, 2, torch.Generator().manual_seed(0)))
    dones = [env.step(torch.tensor([LEFT, RIGHT]))[2] for _ in range(SPEC.steps)]
    assert dones == [False] * (SPEC.steps - 1) + [True]
    with pytest.raises(PlasticityError, match="call reset"):
        env.step(torch.tensor([LEFT, RIGHT]))


def test_layout_never_puts_the_goal_on_the_start_and_is_seeded():
    spec = MazeSpec(size=7, steps=5)
    a = draw_layout(spec, 2000, torch.Generator().manual_seed(1))
    b = draw_layout(spec, 2000, torch.Generator().manual_seed(1))
    assert torch.equal(a.goal, b.goal) and torch.equal(a.teleports, b.teleports)
    assert _cell(spec, spec.start) not in a.goal.tolist()
    assert len(set(a.goal.tolist())) == len(spec.free_cells()) - 1  # every other cell is used


@pytest.mark.parametrize("spec", [SPEC, MazeSpec(size=7, view=5, steps=40, wall_penalty=0.3)], ids=["9x9", "7x7-view5"])
def test_batched_env_equals_single_envs(spec):
    """B batched episodes == B gymnasium episodes with the same layouts and actions."""
    batch = 6
    g = torch.Generator().manual_seed(3)
    layout = draw_layout(spec, batch, g)
    actions = torch.randint(4, (spec.steps, batch), generator=g)
    # Bias the walk so that goals are found (and teleports happen) within the episode.
    env = BatchedMaze(spec, batch)
    obs = [env.reset(layout)]
    rewards = []
    for t in range(spec.steps):
        o, r, _ = env.step(actions[t])
        obs.append(o)
        rewards.append(r)
    assert env.found.sum() > 0, "the test should exercise teleports"
    for b in range(batch):
        single = MazeEnv(spec)
        o, _ = single.reset(options={"layout": (layout.goal[b].item(), layout.teleports[b].tolist())})
        np.testing.assert_array_equal(o, obs[0][b].numpy())
        for t in range(spec.steps):
            o, r, terminated, truncated, _ = single.step(actions[t, b].item())
            np.testing.assert_allclose(o, obs[t + 1][b].numpy(), rtol=0, atol=1e-6)
            assert r == pytest.approx(rewards[t][b].item())
            assert not terminated and truncated == (t == spec.steps - 1)
        assert single.found == env.found[b].item()


def test_gymnasium_checker_and_seeding():
    env = gymnasium.make("plasticity/Maze-v0", maze=MazeSpec(steps=30), render_mode="rgb_array").unwrapped
    check_env(env, skip_render_check=False)
    first, _ = env.reset(seed=5)
    goal = env.goal
    env.reset(seed=5)
    assert env.goal == goal and env.observation_space.contains(first)
    frame = env.render()
    assert frame.shape == (9 * 16, 9 * 16, 3) and frame.dtype == np.uint8


def test_render_frame_marks_agent_and_goal():
    image = render_frame(SPEC.walls(), (4, 4), (1, 7), scale=1)
    assert tuple(image[4, 4]) != tuple(image[1, 7]) != tuple(image[1, 1])
    assert tuple(image[0, 0]) == tuple(image[2, 2])  # both walls


@pytest.mark.parametrize("kwargs,message", [
    (dict(size=8), r"maze size must be odd and >= 5, got 8"),
    (dict(size=3), r"maze size must be odd"),
    (dict(view=2), r"view must be odd"),
    (dict(steps=0), r"steps must be > 0"),
    (dict(wall_penalty=-1.0), r"wall_penalty must be >= 0"),
], ids=["even", "tiny", "even-view", "steps", "penalty"])
def test_bad_maze_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MazeSpec(**kwargs)


def test_bad_layout_shape():
    with pytest.raises(ShapeError, match=r"layout must be goal \[2\], teleports \[2, 20\]"):
        BatchedMaze(SPEC, 2).reset(draw_layout(SPEC, 3))
    assert len(ACTIONS) == 4
