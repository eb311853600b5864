"""Serving core, in process: episode layouts, the episode pyfunc, live sessions (batched
steps, isolation, order, reset, delete, limits, idle expiry) and request checks.
The HTTP tests (Ray Serve, `mlflow models serve`) are in test_serving_http.py."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from plasticity.config import preset
from plasticity.serving import EpisodeLayout, RequestError, ServedModel, SessionStore
from plasticity.tasks import make_task
from tests.conftest import assert_close

SMALL = dict(episodes=512, eval_every=512, eval_episodes=32, save_every=512)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny patterns model (50 bits, 2 patterns) trained in process: ~20 s on 2 cores.
    Kept in the session's base folder, so test_serving_http.py (which imports this
    fixture) finds it instead of training again."""
    from plasticity.train import train

    out = tmp_path_factory.getbasetemp() / "serving-runs"
    found = sorted(out.glob("*/checkpoint.pt"))
    if found:
        return found[0]
    result = train(preset("patterns", "small", out=str(out), **SMALL), progress=False)
    return result.checkpoint


@pytest.fixture(scope="module")
def served(checkpoint):
    return ServedModel.from_checkpoint(checkpoint)


def episodes_of(task_inputs: torch.Tensor, layout: EpisodeLayout) -> np.ndarray:
    """Recover `[E, K+1, P]` (items in the order shown, then the cue) from a task's
    one-cycle inputs `[E, T, n_io]`."""
    every = layout.present_steps + layout.gap_steps
    rows = [task_inputs[:, k * every, :layout.item_size] for k in range(layout.num_items)]
    rows.append(task_inputs[:, -1, :layout.item_size])
    return (torch.stack(rows, 1) / layout.gain).numpy()


def test_episode_layout_is_the_task_schedule():
    cfg = preset("patterns", "small")
    task, layout = make_task(cfg), EpisodeLayout.from_config(cfg)
    ep = task.sample(8, torch.Generator().manual_seed(3))
    episodes = episodes_of(ep.inputs, layout)
    assert episodes.shape == (8, 3, 50)
    assert torch.equal(layout.episode_inputs(torch.from_numpy(episodes)), ep.inputs)
    assert layout.steps == task.steps and layout.n_io == task.n_io


def test_episode_layout_refuses_tasks_it_does_not_cover():
    from plasticity.errors import PlasticityError

    class Cfg:
        task = "maze"

    says = r"task 'maze' cannot be served: serving covers images, patterns, the tasks that say how a served episode"
    with pytest.raises(PlasticityError, match=says + r" is laid out \(Task.episode_layout\)"):
        EpisodeLayout.from_config(Cfg())


def test_run_episodes_equals_the_model_on_the_task_episode(served):
    task = make_task(served.cfg)
    ep = task.sample(16, torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, _ = served.model(ep.inputs)
    out = served.run_episodes(episodes_of(ep.inputs, served.layout))
    assert_close(torch.from_numpy(out), expected[:, -1, :50], rtol=1e-6)


def reference_steps(served: ServedModel, steps: np.ndarray) -> np.ndarray:
    """Outputs `[T, P]` of one uninterrupted run over `steps` `[T, P]` from a zero state."""
    with torch.no_grad():
        out, _ = served.model(served.layout.step_inputs(torch.from_numpy(steps))[None])
    return out[0, :, :served.layout.item_size].numpy()


def random_schedule(served: ServedModel, seed: int) -> np.ndarray:
    ex = served.layout.example(seed)[0]
    return served.layout.schedule(torch.from_numpy(ex[:-1]), torch.from_numpy(ex[-1])).numpy()


@pytest.mark.parametrize("max_forward", [None, 2], ids=["one-forward", "forwards-of-2"])
def test_session_steps_equal_one_run_and_sessions_do_not_share_memory(served, max_forward):
    store = SessionStore(served, max_forward=max_forward)
    a, b, c = store.create(), store.create(), store.create()
    sa, sb, sc = (random_schedule(served, s) for s in (1, 2, 3))
    outs = {a: [], b: [], c: []}
    for t in range(len(sa)):
        # Interleaved and batched: c joins late, b twice per call (its steps stay in order).
        reqs = [(a, sa[t])] + ([(c, sc[t])] if t >= 4 else [])
        if t % 2 == 0:
            reqs += [(b, sb[t]), (b, sb[t + 1])] if t + 1 < len(sb) else [(b, sb[t])]
        for (sid, _), out in zip(reqs, store.step_many(reqs), strict=True):
            outs[sid].append(out)
    assert_close(torch.tensor(np.array(outs[a])), torch.from_numpy(reference_steps(served, sa)), rtol=1e-5)
    assert_close(torch.tensor(np.array(outs[b])), torch.from_numpy(reference_steps(served, sb)), rtol=1e-5)
    assert_close(torch.tensor(np.array(outs[c])), torch.from_numpy(reference_steps(served, sc[4:])), rtol=1e-5)
    assert store.info(a)["steps"] == len(sa) and store.info(b)["steps"] == len(sb)
    assert store.info(a)["hebb_norm"] > 0


@pytest.mark.parametrize("max_forward", [None, 1], ids=["one-forward", "forwards-of-1"])
def test_sequence_requests_equal_single_steps_and_batch_by_length(served, max_forward):
    """`steps` (one forward over T steps) gives what T single steps give, from whatever
    state the session is in; sequences of several sessions and lengths in one batch (equal
    lengths share a forward), a session twice in one batch, and single steps in between."""
    store = SessionStore(served, max_forward=max_forward)
    a, b, c = store.create(), store.create(), store.create()
    sa, sb, sc = (random_schedule(served, s) for s in (5, 6, 7))
    t = len(sa)
    outs = store.steps_many([(a, sa[:4]), (b, sb[:4]), (c, sc[:3]), (a, sa[4:t - 1])])
    assert [o.shape for o in outs] == [(4, 50), (4, 50), (3, 50), (t - 5, 50)]
    last = store.step(a, sa[t - 1])  # a single step continues the sequence's state
    got_a = np.concatenate([outs[0], outs[3], last[None]])
    assert_close(torch.from_numpy(got_a), torch.from_numpy(reference_steps(served, sa)), rtol=1e-5)
    assert_close(torch.from_numpy(outs[1]), torch.from_numpy(reference_steps(served, sb[:4])), rtol=1e-5)
    assert_close(torch.from_numpy(outs[2]), torch.from_numpy(reference_steps(served, sc[:3])), rtol=1e-5)
    assert [store.info(s)["steps"] for s in (a, b, c)] == [t, 4, 3]


@pytest.mark.parametrize("values, message", [
    (np.ones((3, 49)), r"must have shape \[T, 50\]"),
    (np.ones((0, 50)), r"1 <= T <= 8"),
    (np.ones((9, 50)), r"1 <= T <= 8"),
    (np.ones(50), r"got \[50\]"),
    (np.full((2, 50), np.inf), "NaN/inf"),
], ids=["width", "empty", "too-long", "one-item", "inf"])
def test_bad_sequences_get_one_clear_error(served, values, message):
    store = SessionStore(served, max_sequence=8)
    good, bad = store.create(), store.create()
    out_good, out_bad = store.steps_many([(good, np.ones((2, 50), np.float32)), (bad, values)])
    assert isinstance(out_bad, RequestError) and out_bad.status == 400 and "\n" not in str(out_bad)
    assert re.search(message, str(out_bad)), str(out_bad)
    assert out_good.shape == (2, 50) and store.info(bad)["steps"] == 0


def test_reset_starts_a_fresh_episode_and_delete_forgets(served):
    store = SessionStore(served)
    sid = store.create()
    steps = random_schedule(served, 4)
    first = [store.step(sid, x) for x in steps]
    store.reset(sid)
    info = store.info(sid)
    assert (info["steps"], info["resets"], info["hebb_norm"]) == (0, 1, 0.0)
    again = [store.step(sid, x) for x in steps]
    assert_close(torch.tensor(np.array(again)), torch.tensor(np.array(first)), rtol=1e-6)
    store.delete(sid)
    with pytest.raises(RequestError, match="no such session") as e:
        store.step(sid, steps[0])
    assert e.value.status == 404
    with pytest.raises(RequestError, match="already deleted"):
        store.delete(sid)


def test_limit_and_idle_expiry(served):
    now = [0.0]
    store = SessionStore(served, max_sessions=2, idle_timeout_s=10, clock=lambda: now[0])
    a, b = store.create(), store.create()
    with pytest.raises(RequestError, match=r"session limit reached \(2 open\)") as e:
        store.create()
    assert e.value.status == 503
    now[0] = 6.0
    store.step(a, np.zeros(50, np.float32))
    now[0] = 12.0  # b idle for 12 s > 10 s; a for 6 s
    c = store.create()
    assert set(store.sessions) == {a, c} and store.evicted == 1
    with pytest.raises(RequestError, match="expired after 10 s idle") as e:
        store.info(b)
    assert e.value.status == 404


@pytest.mark.parametrize("values, message", [
    (np.ones(49), "must be 50 numbers"),
    (np.full(50, np.nan), "NaN/inf"),
    (["a"] * 50, "must be numbers"),
    ([[1, 1], [1]], "rectangular"),
    (np.full(50, 0.5), "other than -1, 0, \\+1"),
], ids=["length", "nan", "strings", "ragged", "not-ternary"])
def test_bad_steps_get_one_clear_error_and_do_not_disturb_the_batch(served, values, message):
    store = SessionStore(served)
    good, bad = store.create(), store.create()
    x = np.ones(50, np.float32)
    out_good, out_bad = store.step_many([(good, x), (bad, values)])
    assert isinstance(out_bad, RequestError) and out_bad.status == 400
    assert re.search(message, str(out_bad)), str(out_bad)
    assert "\n" not in str(out_bad)
    assert_close(torch.from_numpy(out_good), torch.from_numpy(reference_steps(served, x[None])[0]), rtol=1e-6)
    assert store.info(bad)["steps"] == 0


def test_episode_requests_are_checked(served):
    layout = served.layout
    ok = layout.example()
    assert layout.check_episodes(ok[0]).shape == (1, 3, 50)  # one episode without E
    for bad, message in [(ok[:, :2], r"shape \[E, 3, 50\]"), (ok * np.nan, "NaN"), (ok[:0], r"got \[0, 3, 50\]")]:
        with pytest.raises(RequestError, match=message):
            layout.check_episodes(bad)


@pytest.mark.parametrize("flavor", [True, False], ids=["episode-flavor", "plain"])
def test_the_tracker_logs_the_model_in_the_flavour_serving_hands_it(checkpoint, tmp_path, flavor):
    """Tracking owns model logging and does not know serving: given `episode_flavor`, a
    tracked run's model is the episode pyfunc; given none, a plain PyTorch model."""
    import mlflow

    from plasticity.serving.mlflow_pyfunc import episode_flavor
    from plasticity.tracking.mlflow import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = MlflowTracker.open(uri, "flavours", "run", {})
    model = ServedModel.from_checkpoint(checkpoint).model
    model_uri = tracker.log_model(model, checkpoint=checkpoint, flavor=episode_flavor if flavor else None)
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.models.get_model_info(model_uri).flavors["python_function"]
    assert pyfunc["loader_module"] == ("plasticity.serving.mlflow_pyfunc" if flavor else "mlflow.pytorch")


def test_pyfunc_predicts_what_plasticity_evaluate_scores(checkpoint, tmp_path):
    """The logged pyfunc, loaded back through MLflow, on the episodes `plasticity evaluate`
    draws: the same outputs as the in-process model and the same bit error."""
    import mlflow

    from plasticity.config import PatternsConfig
    from plasticity.serving.mlflow_pyfunc import log_checkpoint
    from plasticity.train.episodic import evaluate_checkpoint, model_from_checkpoint

    uri, version = log_checkpoint(checkpoint, f"sqlite:///{tmp_path / 'mlruns.db'}", register="plasticity-patterns")
    assert str(version) == "1"
    loaded = mlflow.pyfunc.load_model("models:/plasticity-patterns/1")
    layout = loaded.metadata.metadata["episode_layout"]
    assert layout["input"].startswith("float32 [E, 3, 50]")
    assert mlflow.pytorch.load_model(uri) is not None  # the pytorch flavour is kept

    result = evaluate_checkpoint(checkpoint, PatternsConfig, episodes=64, seed=12345, figure=tmp_path / "e.png")
    model, cfg, _ = model_from_checkpoint(checkpoint, PatternsConfig)
    task = make_task(cfg)
    g = torch.Generator().manual_seed(12345)
    ep = task.sample(64, g)  # evaluate_checkpoint's one batch of 64 (eval chunk at N = 51)
    served = ServedModel.from_checkpoint(checkpoint)
    out = loaded.predict(episodes_of(ep.inputs, served.layout).astype(np.float32))
    with torch.no_grad():
        expected, _ = model(ep.inputs)
    assert_close(torch.from_numpy(out), expected[:, -1, :50], rtol=1e-6)
    wrong = np.sign(out) != ep.target.numpy()
    assert float(wrong[ep.erased.numpy()].mean()) == pytest.approx(result["metrics"]["bit_error_erased"], abs=1e-6)
