"""A2C on the maze: the loss on a hand-computed case, learning on a small maze, the
config, resume, divergence, the CLI (train, evaluate) and the MLflow artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from plasticity.cli import main as cli_main
from plasticity.config import MazeConfig, preset
from plasticity.errors import ConfigError
from plasticity.rules import rule_names
from plasticity.tasks import MazeTask
from plasticity.train import TrainingDiverged, a2c, load_checkpoint, model_from_checkpoint, train
from plasticity.train.a2c import a2c_loss, discounted_returns


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 10.0, -0.1]])
    expected = torch.tensor([[1 + 0.5 * 0 + 0.25 * 2, 0 + 0.5 * 2, 2.0], [0.5 * 10 - 0.25 * 0.1, 10 - 0.05, -0.1]])
    assert torch.allclose(discounted_returns(rewards, 0.5), expected)


def test_a2c_loss_on_a_hand_computed_case():
    # Two episodes of two steps, gamma 0.5; each episode has its own value baseline.
    rewards = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    values = torch.tensor([[0.5, 1.0], [3.0, 1.0]], requires_grad=True)
    log_probs = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]], requires_grad=True)
    entropy = torch.tensor([[1.0, 0.5], [1.2, 0.3]], requires_grad=True)
    loss, parts = a2c_loss(log_probs, entropy, values, rewards, gamma=0.5, value_weight=0.1, entropy_weight=0.03)
    # Returns [[2, 2], [2, 4]]; advantages [[1.5, 1], [-1, 3]].
    policy = -(-1.0 * 1.5 - 2.0 * 1.0 - 0.5 * -1.0 - 1.5 * 3.0) / 4   # 1.875
    value = (1.5**2 + 1**2 + 1**2 + 3**2) / 4                       # 3.3125
    ent = (1.0 + 0.5 + 1.2 + 0.3) / 4                               # 0.75
    assert parts["policy_loss"] == pytest.approx(policy)
    assert parts["value_loss"] == pytest.approx(value)
    assert parts["entropy"] == pytest.approx(ent)
    assert loss.item() == pytest.approx(policy + 0.1 * value - 0.03 * ent)
    loss.backward()
    # The policy term does not train the critic: d/dV = -2 * 0.1 * A / 4 only.
    assert torch.allclose(values.grad, -0.05 * torch.tensor([[1.5, 1.0], [-1.0, 3.0]]))
    assert torch.allclose(log_probs.grad, -torch.tensor([[1.5, 1.0], [-1.0, 3.0]]) / 4)
    assert torch.allclose(entropy.grad, torch.full((2, 2), -0.03 / 4))


def tiny(tmp_path, **kw):
    """A 7x7 maze (21 free cells), 40 steps, 24 neurons: learns in a few seconds."""
    base = dict(maze_size=7, episode_steps=40, hidden=24, batch_size=32, lr=1e-2, episodes=3072, eval_every=1024,
                eval_episodes=128, save_every=1024, out=str(tmp_path))
    return preset("maze", "small", **{**base, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("model", ["plastic", "rnn", "neuromod", "retroactive"])
def test_short_runs_improve_the_return_on_a_small_maze(tmp_path, model):
    calls = []
    result = train(tiny(tmp_path, model=model), report=lambda step, m, files: calls.append((step, m, files)),
                   progress=False)
    assert [c[0] for c in calls] == [1024, 2048, 3072]
    first, last = calls[0][1], calls[-1][1]
    # Before training the agent bumps into walls and finds the goal about once in 40 steps
    # (return ~4); in 3072 episodes it learns to explore and to come back (return 10-25).
    maze = MazeTask(tiny(tmp_path, model=model))
    untrained, _ = a2c.evaluate(maze.build_model(maze.cfg), maze.spec, maze.heldout_layouts(128, 1),
                                "cpu", 1)
    # (+2.5: since eta is a sigmoid of a trained logit, the retroactive model's trace rate
    # moves about 10x slower at the same eta-lr; it reached +2.9 in this run length.) The best
    # evaluation, not the last: at this high learning rate the non-plastic rnn can collapse
    # after learning (seed 0: held-out return 6.5, 12.3, then 1.9; seed 1: 8.0, 17.0, 27.9).
    best = max(m["eval/return"] for _, m, _ in calls)
    assert best > untrained["return"] + 2.5, (untrained, [m["eval/return"] for _, m, _ in calls])
    assert last["charts/episodic_return"] > first["charts/episodic_return"]
    assert last["eval/loss"] == -last["eval/return"]
    assert {"charts/episodic_return", "charts/goals", "losses/value_loss", "losses/policy_loss", "losses/entropy",
            "eval/goals", "eval/wall_bumps", "perf/episodes_per_s", "model/params"} <= set(last)
    assert ("plastic/eta_mean" in last) == (model != "rnn")
    files = calls[-1][2]
    assert files["trajectory"].suffix == ".png" and files["trajectory_gif"].read_bytes()[:6] == b"GIF89a"
    assert files["checkpoint"] == result.checkpoint
    assert (result.run_dir / "learning_curve.png").is_file()
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1024, 2048, 3072]


def test_models_have_the_same_number_of_neurons_and_the_right_core():
    cfgs = {m: preset("maze", "small", model=m) for m in MazeConfig.models()}
    agents = {m: MazeTask(c).build_model(c) for m, c in cfgs.items()}
    assert {a.core.n for a in agents.values()} == {64}
    assert agents["neuromod"].core.plastic.rule.name == "neuromod"
    assert agents["retroactive"].core.plastic.rule.traces == ("hebb", "eligibility")
    assert agents["plastic"].core.plastic.rule.name == "oja" and agents["plastic"].core.modulator is None
    neuron_cfg = preset("maze", "small", model="neuromod", modulation="neuron")
    per_neuron = MazeTask(neuron_cfg).build_model(neuron_cfg)
    assert per_neuron.core.modulator.out_features == 64
    assert not hasattr(agents["rnn"].core, "plastic")


def test_resume_continues_exactly(tmp_path):
    kw = dict(model="retroactive", episodes=128, eval_every=64, save_every=64, eval_episodes=32)
    straight = train(tiny(tmp_path / "a", **kw), progress=False)
    half = train(tiny(tmp_path / "b", **{**kw, "episodes": 64}), progress=False)
    resumed = train(tiny(tmp_path / "b", **kw), resume=half.checkpoint, progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["step"] for h in resumed.history] == [64, 128]
    assert resumed.history[-1]["eval/return"] == straight.history[-1]["eval/return"]


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    real = a2c.a2c_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value, parts = real(*args, **kwargs)
        return (value * float("nan") if calls["n"] == 2 else value), parts

    monkeypatch.setattr(a2c, "a2c_loss", loss)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at episode 32: lower --lr"):
        train(tiny(tmp_path), progress=False)
    (ckpt,) = tmp_path.glob("*/checkpoint.pt")
    assert load_checkpoint(ckpt)["episode"] == 32


@pytest.mark.parametrize("kwargs,message", [
    (dict(rule="neuromod"), r"rule 'neuromod' is neuromodulated: pass --model neuromod"),
    (dict(model="lstm"), r"unknown model 'lstm': choose one of plastic, rnn, neuromod, retroactive"),
    (dict(maze_size=8), r"maze size must be odd"),
    (dict(gamma=1.5), r"gamma must be in \[0, 1\]"),
    (dict(extra_neurons=4), r"extra_neurons must be 0, got 4"),
    (dict(entropy_weight=-0.1), r"entropy_weight must be >= 0"),
], ids=["modulated-rule-on-plastic", "lstm", "even-maze", "gamma", "extra-neurons", "entropy"])
def test_bad_maze_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        preset("maze", "small", **kwargs)


def test_neuromodulated_models_use_their_own_rule():
    cfg = preset("maze", "small", model="retroactive")
    assert cfg.rule == "retroactive"
    assert MazeConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_train_evaluate_and_mlflow_artifacts(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = ["train", "maze", "--preset", "small", "--model", "neuromod", "--maze-size", "5", "--episode-steps", "20",
            "--hidden", "8", "--episodes", "64", "--eval-every", "32", "--eval-episodes", "16", "--out",
            str(tmp_path / "runs"), "--tracking-uri", uri, "--no-progress"]
    assert cli_main(args) == 0
    assert "eval/return=" in capsys.readouterr().out
    (ckpt,) = (tmp_path / "runs").glob("maze__*/checkpoint.pt")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    assert run.data.params["model"] == "neuromod" and run.data.params["rule"] == "neuromod"
    assert "charts/episodic_return" in run.data.metrics
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert any(p.startswith("figures/trajectory_") for p in figures), figures
    files = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/trajectory.gif", "run/learning_curve.png", "run/checkpoint.pt"} <= files
    assert cli_main(["evaluate", str(ckpt), "--episodes", "8"]) == 0
    out = capsys.readouterr().out
    assert "maze/neuromod after 64 training episodes" in out and "return:" in out
    assert ckpt.with_name("evaluation.png").is_file() and ckpt.with_name("evaluation.gif").is_file()
    agent, cfg, _ = model_from_checkpoint(ckpt, MazeConfig)
    assert cfg.hidden == 8 and agent.core.n == 8


def test_maze_sweep_space_draws_valid_trial_configs():
    optuna = pytest.importorskip("optuna")
    from tune.spaces import SPACES, DefineByRun, validate_space
    from tune.trainable import SweepContext, trial_config

    space = validate_space(SPACES["maze"], "maze")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        cfg = trial_config(SweepContext("maze", "small", 1024, 128), DefineByRun(space, {})(trial), "/tmp/unused")
        study.tell(trial, 0.0)
        assert cfg.rule in rule_names(modulated=False) if cfg.model == "plastic" else cfg.rule == cfg.model
        assert cfg.episodes == 1024 and cfg.eval_every == 128
        seen.add(cfg.model)
    assert seen == set(space["model"]["choices"])
