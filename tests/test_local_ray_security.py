"""The Ray a command starts for itself (plasticity/localray.py): on loopback, with a token.

A real `plasticity sweep` (2 small trials) and a real `plasticity serve` of a tiny
checkpoint, each with no Ray address, are watched while they run:

- every TCP socket their process trees listen on (GCS, raylets, agents, metrics, the
  driver, every trial worker and Serve replica) is on loopback;
- the GCS (a raw gRPC call), the dashboard agent and the runtime-env agent (HTTP) refuse
  a request without the token or with a wrong one and take one with the token, read (as
  any process of the same user could) from the 0600 file in a 0700 folder that
  RAY_AUTH_TOKEN_PATH names in the raylet's environment;
- the token is in no process's command line on the machine, in no log (the sweep's own,
  the command's output, Ray's session folder), and its folder is gone once the command
  has ended. $HOME is a fresh folder: Ray's shared ~/.ray/auth_token must not appear.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.servers import free_port, gcs_call, http_status, stop
from tests.test_cluster_security import family, is_loopback, listening
from tests.test_serving import checkpoint  # noqa: F401 - the shared fixture

pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'plasticity[serve]'")
pytestmark = pytest.mark.slow
APP_TOKEN = "serve-app-token-" + "y" * 24
"""`plasticity serve`'s own API token (not Ray's)."""


@dataclass
class Run:
    """What a command's process tree showed while it ran."""

    proc: subprocess.Popen
    folder: Path
    """Its working folder; `out.log` holds its stdout and stderr."""
    home: Path
    ray_tmp: Path
    sockets: dict[tuple[str, int], str] = field(default_factory=dict)
    """(address, port) -> name of the process listening there."""
    token: str | None = None
    token_file: Path | None = None
    token_modes: tuple[int, int] | None = None
    """(file, folder) modes."""
    probes: dict[str, list] = field(default_factory=dict)
    """server -> answers to (no token, a wrong token, the token)."""
    argv_with_token: set[str] = field(default_factory=set)
    port: int | None = None
    """`plasticity serve`'s HTTP port."""
    info_status: int | None = None
    """Its answer to GET /info with its own API token."""

    def poll(self) -> None:
        pids = family({self.proc.pid})
        for address, port, pid in listening(pids):
            name = comm(pid)  # "?" once the process has ended: keep the name seen before
            if name != "?" or (address, port) not in self.sockets:
                self.sockets[(address, port)] = name
        if self.token is None:
            self._find_token(pids)
        if self.token is not None:
            if not self.probes:
                self._probe()
            for path in Path("/proc").glob("[0-9]*/cmdline"):
                if any(self.token in arg for arg in cmdline(path)):
                    self.argv_with_token.add(f"pid {path.parent.name} ({comm(int(path.parent.name))})")

    def _find_token(self, pids: set[int]) -> None:
        for pid in pids:
            if comm(pid) != "raylet":
                continue
            try:
                raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            env = dict(item.partition("=")[::2] for item in raw.split("\0") if "=" in item)
            assert env.get("RAY_AUTH_MODE") == "token", "the local Ray runs without token authentication"
            assert "RAY_AUTH_TOKEN" not in env, "the Ray token travels in the environment"
            path = Path(env["RAY_AUTH_TOKEN_PATH"])
            self.token_modes = (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777)
            self.token_file, self.token = path, path.read_text().strip()

    def _probe(self) -> None:
        """The GCS, the dashboard agent's and the runtime-env agent's HTTP servers, at the
        ports Ray writes into its session folder, asked without, with a wrong and with the token."""
        ports = {}
        for name in ("gcs_server_port", "dashboard_agent_listen_port", "runtime_env_agent_port"):
            found = list((self.ray_tmp / "ray" / "session_latest").glob(f"{name}_*"))
            text = found[0].read_text().strip() if found else ""
            if not text:
                return  # not all up yet: the next poll tries again
            ports[name] = int(text)
        answers = (None, "0" * 64, self.token)
        self.probes["gcs"] = [gcs_call(f"127.0.0.1:{ports['gcs_server_port']}", t) for t in answers]
        for name, key in (("dashboard agent", "dashboard_agent_listen_port"), ("runtime-env agent",
                                                                                "runtime_env_agent_port")):
            if ports[key] == -1:
                # Ray's fixed agent port (52365) held by another Ray on this machine: the
                # agent runs without its HTTP server (Ray's choice; nothing to ask).
                self.probes[name] = ["no HTTP server"]
                continue
            # A path behind the token check (the agents answer /api/healthz without one).
            url = f"http://127.0.0.1:{ports[key]}/api/plasticity-probe"
            self.probes[name] = [http_status(url, t) for t in answers]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cmdline(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def start(argv: list[str], folder: Path, extra_env: dict[str, str] | None = None) -> Run:
    """`python -m plasticity.cli ARGV` in `folder`, with no Ray address, token or bind
    setting in its environment, a fresh HOME (the fused kernels still come from the usual
    build folder) and Ray's files in a short private folder (unix socket paths are limited)."""
    from torch.utils import cpp_extension

    kernels = Path(cpp_extension._get_build_directory("plasticity", verbose=False)).parent
    home, ray_tmp = folder / "home", Path(tempfile.mkdtemp(prefix="plr", dir="/tmp"))
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS")) and k != "PLASTICITY_BIND"}
    env.update(HOME=str(home), RAY_TMPDIR=str(ray_tmp), TORCH_EXTENSIONS_DIR=str(kernels), PYTHONUNBUFFERED="1",
               **(extra_env or {}))
    with open(folder / "out.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "plasticity.cli", *argv], cwd=folder, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Run(proc, folder, home, ray_tmp)


def end(run: Run) -> None:
    if run.proc.poll() is None:
        stop(run.proc)
    shutil.rmtree(run.ray_tmp, ignore_errors=True)


def files_holding(root: Path, secret: str) -> list[str]:
    out = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                out.append(str(path))
        except OSError:
            continue  # a socket, or removed meanwhile
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2-trial sweep, watched from start to end; Ray's files kept until the checks ran."""
    folder = tmp_path_factory.mktemp("sweep")
    run = start(["sweep", "--task", "patterns", "--num-samples", "2", "--max-episodes", "128", "--eval-every", "32",
                 "--max-concurrent", "2", "--no-tracking", "--name", "sec", "--storage",
                 f"sqlite:///{folder / 'optuna.db'}", "--storage-path", str(folder / "results")], folder)
    try:
        deadline = time.time() + 600
        while run.proc.poll() is None and time.time() < deadline:
            run.poll()
            time.sleep(0.5)
        yield run
    finally:
        end(run)


@pytest.fixture(scope="module")
def served(checkpoint, tmp_path_factory):  # noqa: F811
    """`plasticity serve` of the tiny checkpoint, watched until its API answers and the
    probes ran, then stopped with SIGTERM (as a service manager does)."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    run = start(["serve", str(checkpoint), "--port", str(port), "--num-cpus", "2", "--shard-cpus", "0.5",
                 "--threads", "1"], folder, {"PLASTICITY_SERVE_TOKEN": APP_TOKEN})
    try:
        deadline = time.time() + 400
        while run.proc.poll() is None and time.time() < deadline:
            run.poll()
            # Up (the command says so once its signal handlers are in place) and probed.
            if "Ctrl-C to stop" in (folder / "out.log").read_text() and run.probes:
                run.poll()  # every replica is up by now
                break
            time.sleep(0.5)
        run.port = port
        run.info_status = http_status(f"http://127.0.0.1:{port}/info", APP_TOKEN)
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(timeout=120)
        yield run
    finally:
        end(run)


def check_loopback_and_guarded(run: Run, listeners: set[str]) -> None:
    print(f"{len(run.sockets)} listening sockets:",
          ", ".join(f"{a}:{p} {n}" for (a, p), n in sorted(run.sockets.items())))
    outside = {f"{a}:{p}": n for (a, p), n in run.sockets.items() if not is_loopback(a)}
    assert not outside, f"listening beyond loopback: {outside}"
    seen = set(run.sockets.values())
    assert listeners <= seen, f"no listening socket of {listeners - seen} seen (saw {sorted(seen)})"
    assert run.token_modes == (0o600, 0o700), f"token file and folder modes {run.token_modes}"
    print("answers to (no token, a wrong token, the token):", run.probes)
    assert run.probes.get("gcs") == ["UNAUTHENTICATED", "UNAUTHENTICATED", "OK"], run.probes
    for name in ("dashboard agent", "runtime-env agent"):
        if run.probes[name] == ["no HTTP server"] and name == "dashboard agent":
            continue
        refused, wrong, ok = run.probes[name]
        assert (refused, wrong) == (401, 403) and ok not in (401, 403), (name, run.probes[name])
    assert not run.argv_with_token, f"the Ray token in the command line of {run.argv_with_token}"


def check_nothing_left(run: Run) -> None:
    assert not run.token_file.parent.exists(), f"the token folder {run.token_file.parent} was left behind"
    assert not (run.home / ".ray").exists(), "Ray wrote its shared ~/.ray/auth_token"
    assert not files_holding(run.ray_tmp, run.token), "the Ray token in Ray's session folder"
    assert not files_holding(run.folder, run.token), "the Ray token in the command's output or logs"


def test_sweep_ray_listens_on_loopback_and_wants_the_token(sweep):
    output = (sweep.folder / "out.log").read_text()
    assert sweep.proc.returncode == 0, output[-3000:]
    assert "2/2 trials finished without error" in output
    # Tune's function trainables (the trials' workers) among the listeners.
    check_loopback_and_guarded(sweep, {"gcs_server", "raylet", "ray::ImplicitFu"})


def test_sweep_leaves_no_token_behind(sweep):
    assert (sweep.folder / "results" / "sec" / "sweep-sec.log").stat().st_size > 0
    assert sweep.token and len(sweep.token) == 64
    check_nothing_left(sweep)


def test_serve_ray_listens_on_loopback_and_wants_the_token(served):
    output = (served.folder / "out.log").read_text()
    assert f"on http://127.0.0.1:{served.port}" in output, output[-3000:]
    assert served.proc.returncode == 0, output[-3000:]
    assert ("127.0.0.1", served.port) in served.sockets and served.info_status == 200
    # The gateway's and the shard's replicas (their inter-deployment gRPC servers included).
    check_loopback_and_guarded(served, {"gcs_server", "raylet", "ray::ServeRepli", "ray::ProxyActor"})
    assert APP_TOKEN != served.token


def test_serve_leaves_no_token_behind(served):
    check_nothing_left(served)


OPENED = """
import json, os, time
from plasticity.localray import start_local_ray
from tests.test_cluster_security import family, listening
start_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
time.sleep(3)  # the agents are up
print(json.dumps(sorted({address for address, _, _ in listening(family({os.getpid()}))})))
"""


def test_opening_the_local_ray_to_the_network_is_asked_for(tmp_path):
    """PLASTICITY_BIND=0.0.0.0: Ray's own choice (beyond loopback), with a warning."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="plr", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    try:
        proc = subprocess.run([sys.executable, "-c", OPENED], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**env, "PLASTICITY_BIND": "0.0.0.0", "RAY_TMPDIR": str(ray_tmp),
                                   "HOME": str(tmp_path)})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    addresses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [a for a in addresses if not is_loopback(a)], addresses
    assert "plasticity: warning: the local Ray listens on 0.0.0.0 (PLASTICITY_BIND)" in proc.stderr
