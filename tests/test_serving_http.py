"""Serving over real HTTP, on loopback and free ports: `plasticity serve` (Ray Serve, two
shards, a token) and `mlflow models serve`, each a real process shared by this module's
tests. The example client runs against both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticity.serving import ServedModel
from tests.conftest import REPO, assert_close
from tests.servers import free_port, stop
from tests.test_serving import checkpoint, reference_steps  # noqa: F401 - the shared fixture

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'plasticity[serve]'")
sys.path.insert(0, str(REPO / "examples"))
import serve_client  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "test-token-" + "x" * 24


def http(method: str, url: str, body=None, token: str | None = TOKEN, raw: bytes | None = None):
    """(status, JSON body) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError as e:
            if e.code not in (404, 503):
                return  # the app answers (401 without a token)
            time.sleep(1)  # Serve's proxy is up, the app not yet
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} not answering after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def registry(checkpoint, tmp_path_factory):  # noqa: F811
    """A SQLite tracking store where the checkpoint is registered as plasticity-patterns/1."""
    from plasticity.serving.mlflow_pyfunc import log_checkpoint

    work = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    log_checkpoint(checkpoint, uri, register="plasticity-patterns")
    return uri


@pytest.fixture(scope="module")
def serve_url(registry):
    """`plasticity serve models:/plasticity-patterns/1` with 2 shards, at most 4 sessions,
    a token from the environment."""
    port = free_port()
    # A short private folder for Ray's sockets and logs (other Rays run on this machine).
    ray_tmp = tempfile.mkdtemp(prefix="pls", dir="/tmp")
    log = Path(ray_tmp) / "serve.log"
    env = {**os.environ, "PLASTICITY_SERVE_TOKEN": TOKEN, "RAY_TMPDIR": ray_tmp, "MLFLOW_TRACKING_URI": registry}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plasticity.cli", "serve", "models:/plasticity-patterns/1", "--port", str(port),
         "--shards", "2",
         "--max-sessions", "4", "--num-cpus", "2", "--shard-cpus", "0.5", "--batch-wait-ms", "20",
         "--threads", "1"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/info", proc, log)
        yield url
    finally:
        stop(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_client_example_over_serve_equals_in_process(serve_url, checkpoint):  # noqa: F811
    result = serve_client.run_session(serve_url, seed=7, token=TOKEN, verbose=True)
    served = ServedModel.from_checkpoint(checkpoint)
    expected = reference_steps(served, result["steps"].astype(np.float32))
    assert_close(torch.from_numpy(result["outputs"]).float(), torch.from_numpy(expected), rtol=1e-5)
    assert result["session"]["steps"] == len(result["steps"])
    assert result["bit_error"] < 0.45


def test_concurrent_sessions_are_batched_routed_by_id_and_isolated(serve_url, checkpoint):  # noqa: F811
    served = ServedModel.from_checkpoint(checkpoint)
    schedules = [serve_client.make_episode(2, 50, seed) for seed in range(4)]
    steps = []
    for patterns, query, _, _ in schedules:
        s = [p for p in patterns for p in [p] * 3 + [np.zeros(50)]] + [query] * 3
        steps.append(np.array(s, np.float32))
    ids = [http("POST", f"{serve_url}/sessions")[1]["id"] for _ in steps]
    outputs, batches = [[] for _ in steps], []
    barrier = threading.Barrier(len(steps))

    def drive(i):
        for x in steps[i]:
            barrier.wait()  # every session sends its t-th step at the same time
            status, body = http("POST", f"{serve_url}/sessions/{ids[i]}/step", {"input": x.tolist()})
            assert status == 200, body
            outputs[i].append(body["output"])
            batches.append(body["batch"])

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i, sid in enumerate(ids):
        assert_close(torch.tensor(outputs[i]), torch.from_numpy(reference_steps(served, steps[i])), rtol=1e-5,
                     name=f"session {i}")
        status, info = http("GET", f"{serve_url}/sessions/{sid}")
        assert status == 200 and info["steps"] == len(steps[i]) and info["shard"] == int(sid.split("-")[0])
    # Both shards hold sessions (the limit is 2 each), and some steps ran together.
    assert {sid.split("-")[0] for sid in ids} == {"0", "1"}
    assert max(batches) >= 2, batches
    # Full: the fifth session is refused with a clear 503.
    status, body = http("POST", f"{serve_url}/sessions")
    assert status == 503 and "session limit reached" in body["error"]
    for sid in ids:
        assert http("DELETE", f"{serve_url}/sessions/{sid}")[0] == 200
    assert http("GET", f"{serve_url}/sessions/{ids[0]}")[0] == 404


def test_a_sequence_request_equals_its_single_steps(serve_url, checkpoint):  # noqa: F811
    """`POST /sessions/ID/steps`: T steps in one request (one forward), continuing the
    session's state from one request to the next; bad sequences get 400 and change nothing."""
    served = ServedModel.from_checkpoint(checkpoint)
    patterns, query, _, _ = serve_client.make_episode(2, 50, 11)
    steps = np.array([p for p in patterns for p in [p] * 3 + [np.zeros(50)]] + [query] * 3, np.float32)
    status, body = http("POST", f"{serve_url}/sessions")
    assert status == 201
    sid = body["id"]
    status, first = http("POST", f"{serve_url}/sessions/{sid}/steps", {"inputs": steps[:5].tolist()})
    assert status == 200 and first["steps"] == 5 and len(first["outputs"]) == 5, first
    status, rest = http("POST", f"{serve_url}/sessions/{sid}/steps", {"inputs": steps[5:].tolist()})
    assert status == 200 and rest["steps"] == len(steps), rest
    assert_close(torch.tensor(first["outputs"] + rest["outputs"]), torch.from_numpy(reference_steps(served, steps)),
                 rtol=1e-5)
    for bad, message in [({"input": [1.0] * 50}, '{"inputs": [[numbers], ...]}'),
                         ({"inputs": [[1.0] * 49]}, "must have shape [T, 50]"),
                         ({"inputs": []}, "must have shape [T, 50]"),
                         ({"inputs": [[0.5] * 50]}, "other than -1, 0, +1")]:
        status, answer = http("POST", f"{serve_url}/sessions/{sid}/steps", bad)
        assert status == 400 and message in answer["error"], answer
    assert http("GET", f"{serve_url}/sessions/{sid}")[1]["steps"] == len(steps)
    assert http("DELETE", f"{serve_url}/sessions/{sid}")[0] == 200


def test_reset_bad_requests_and_token(serve_url):
    status, body = http("POST", f"{serve_url}/sessions")
    assert status == 201
    sid = body["id"]
    ones = [1.0] * 50
    first = http("POST", f"{serve_url}/sessions/{sid}/step", {"input": ones})[1]["output"]
    http("POST", f"{serve_url}/sessions/{sid}/step", {"input": ones})
    assert http("POST", f"{serve_url}/sessions/{sid}/reset")[0] == 200
    assert http("GET", f"{serve_url}/sessions/{sid}")[1]["steps"] == 0
    assert http("POST", f"{serve_url}/sessions/{sid}/step", {"input": ones})[1]["output"] == first

    for body, raw, message in [({"input": [1.0] * 49}, None, "must be 50 numbers"),
                               ({"input": ["a"] * 50}, None, "must be numbers"),
                               ({"input": [0.5] * 50}, None, "other than -1, 0, +1"),
                               ({"x": 1}, None, '{"input": [numbers]}'),
                               (None, b"{not json", "must be JSON")]:
        status, answer = http("POST", f"{serve_url}/sessions/{sid}/step", body, raw=raw)
        assert status == 400 and message in answer["error"], answer
    # NaN is not JSON; Python's encoder writes it anyway, as some clients do.
    raw = json.dumps({"input": [float("nan")] + [1.0] * 49}).encode()
    status, answer = http("POST", f"{serve_url}/sessions/{sid}/step", raw=raw)
    assert status == 400 and "NaN" in answer["error"], answer
    assert http("GET", f"{serve_url}/sessions/{sid}")[1]["steps"] == 1  # bad steps changed nothing

    assert http("GET", f"{serve_url}/sessions/9-{'a' * 32}")[0] == 404
    assert http("GET", f"{serve_url}/sessions/{sid[:-1]}x")[0] == 404
    for token in (None, "wrong-token-" + "y" * 24):
        status, answer = http("GET", f"{serve_url}/sessions/{sid}", token=token)
        assert status == 401 and "Authorization: Bearer" in answer["error"]
        assert http("POST", f"{serve_url}/sessions", token=token)[0] == 401
    assert http("DELETE", f"{serve_url}/sessions/{sid}")[0] == 200


def test_token_file_must_be_private(tmp_path, monkeypatch):
    from plasticity.errors import PlasticityError
    from plasticity.serving.ray_app import read_token

    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(PlasticityError, match="readable by others .* chmod 600"):
        read_token(str(path))
    path.chmod(0o600)
    assert read_token(str(path)) == TOKEN
    monkeypatch.setenv("PLASTICITY_SERVE_TOKEN", "short")
    with pytest.raises(PlasticityError, match="shorter than 16"):
        read_token(None)
    monkeypatch.delenv("PLASTICITY_SERVE_TOKEN")
    assert read_token(None) is None


def test_serve_command_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "plasticity.cli", "serve", str(tmp_path / "nope.pt")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "neither a checkpoint file nor a model URI" in proc.stderr


@pytest.fixture(scope="module")
def mlflow_url(registry, tmp_path_factory):
    """`mlflow models serve -m models:/plasticity-patterns/1 --env-manager local`."""
    work = tmp_path_factory.mktemp("mlflow-serve")
    uri = registry
    port = free_port()
    log = work / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/plasticity-patterns/1",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=work, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", proc, log)
        yield url
    finally:
        stop(proc)


def test_mlflow_models_serve_answers_episodes(mlflow_url, checkpoint):  # noqa: F811
    result = serve_client.run_episode_request(mlflow_url, 2, 50, seed=7)
    served = ServedModel.from_checkpoint(checkpoint)
    patterns, query, _, _ = serve_client.make_episode(2, 50, 7)
    expected = served.run_episodes(np.concatenate([patterns, query[None]])[None].astype(np.float32))
    assert_close(torch.from_numpy(result["output"]).float(), torch.from_numpy(expected[0]), rtol=1e-6)
    # The same episode through the live-session schedule ends with the same output.
    steps = served.layout.schedule(torch.from_numpy(patterns).float(), torch.from_numpy(query).float()).numpy()
    assert_close(torch.from_numpy(reference_steps(served, steps)[-1]), torch.from_numpy(expected[0]), rtol=1e-5)


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": [[[1.0] * 50] * 2]}, 400, "episodes must have shape [E, 3, 50]"),
    ({"inputs": [[[0.5] * 50] * 3]}, 400, "other than -1, 0, +1"),
    ({"inputs": [[["a"] * 50] * 3]}, 400, "could not convert string to float"),
    ({"inputs": [[[1.0] * 50, [1.0] * 49, [1.0] * 50]]}, 400, "inhomogeneous"),
], ids=["length", "values", "dtype", "ragged"])
def test_mlflow_models_serve_bad_requests(mlflow_url, body, status, message):
    code, answer = http("POST", f"{mlflow_url}/invocations", body, token=None)
    assert code == status and message in answer["message"], answer
    assert "Failed to predict data" not in answer["message"]


def test_mlflow_models_serve_nan(mlflow_url):
    # NaN is not JSON; Python's encoder writes it anyway, as some clients do.
    raw = json.dumps({"inputs": [[[float("nan")] + [1.0] * 49] + [[1.0] * 50] * 2]}).encode()
    code, answer = http("POST", f"{mlflow_url}/invocations", raw=raw, token=None)
    assert code == 400 and "NaN/inf" in answer["message"], answer
