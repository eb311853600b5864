"""The cluster of docker-compose.yml as processes on one machine: the MLflow server (basic
auth, backend store and users in the local PostgreSQL), a Ray head (dashboard + job API,
token auth) and Ray worker nodes joining it. For development and for the fault tests;
the same entrypoints and settings as the containers (see cluster/settings.py).

    cp .env.example .env && $EDITOR .env        # secrets (or export them)
    python -m cluster.local up [--workers 1]    # start, wait until every service answers
    eval "$(python -m cluster.local env)"       # MLFLOW_TRACKING_*, RAY_AUTH_*, RAY_ADDRESS for clients
    ray job submit --working-dir . -- python -m tune.sweep --task patterns
    python -m cluster.local status
    python -m cluster.local stop ray-worker-1 --kill   # fault injection: SIGKILL one node
    python -m cluster.local start ray-worker-1
    python -m cluster.local down                # stop everything; data stays

Differences from the containers: PostgreSQL is the one already running (POSTGRES_HOST,
default 127.0.0.1), every server (MLflow, and all of Ray's: GCS, raylet, dashboard, client,
agents, metrics) listens on 127.0.0.1 only unless `--bind ADDRESS --expose` (or
PLASTICITY_BIND) asks for more, volumes are folders under the state folder (`--state-dir`,
default `.cluster/`, mode 0700), GPUs are the ones this machine has, and each node gets its
own ports for Ray's agents so that several nodes fit on one host.

`cluster.json` records each started process's pid, start time and command line; `stop`
and `down` signal a process only while all three still match (a pid reused by another
program is left alone), and a failed `up` stops what it had started. Those checks and the
signalling are `cluster/processes.py`; this file is the stack (what to start, in which
order, with which settings, and when it is up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cluster import entrypoint
from cluster.entrypoint import LOOPBACK, connect_host
from cluster.processes import (
    alive,
    free_port,
    last_error,
    owned,
    pid_exists,
    private_dir,
    redacted_cmdline,
    start_time,
    stop_group,
)
from cluster.settings import REPO, Service, resolve_env, services
from plasticity.errors import ConfigError

LOCAL_ROLES = ("mlflow", "ray-head", "ray-worker")
# Below the env file and the environment: sizes that suit one machine.
LOCAL_DEFAULTS = {"RAY_HEAD_CPUS": "1", "RAY_WORKER_CPUS": "1", "MLFLOW_WORKERS": "2", "POSTGRES_DB": "postgres"}
STATE_FILE = "cluster.json"
RAY_STARTED = "Ray runtime started."  # `ray start` (2.60) prints it once the node is up


def role_of(service: Service) -> str | None:
    """`ROLE` of a service whose command is `python -m cluster.entrypoint ROLE`."""
    cmd = service.command
    if len(cmd) == 4 and cmd[1:3] == ["-m", "cluster.entrypoint"]:
        return cmd[3]
    return None


def localise(value: str, names: list[str], data_dir: Path, bind: str = "127.0.0.1") -> str:
    """Service host names -> where this machine reaches `bind`, container volumes (/data/...)
    -> the state folder, 0.0.0.0 (a container's "listen on the published port") -> `bind`."""
    for name in names:
        value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?=:\d)", connect_host(bind), value)
    value = value.replace("0.0.0.0", bind)
    if value == "/data" or value.startswith("/data/"):
        value = str(data_dir / value.removeprefix("/data").lstrip("/"))
    return value


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPU for Ray
        return 0


@dataclass
class Cluster:
    """The local cluster under `state_dir` (pids, logs, data), its servers bound to `bind`."""

    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    bind: str = "127.0.0.1"

    @classmethod
    def from_env(cls, state_dir: Path | str = ".cluster", env_file: Path | None = None,
                 environ: dict[str, str] | None = None, bind: str | None = None) -> Cluster:
        env = {**LOCAL_DEFAULTS, **resolve_env(env_file, environ)}
        configured = int(env.get("RAY_WORKER_GPUS") or 0)
        env["RAY_WORKER_GPUS"] = str(min(configured, gpu_count()))
        cluster = cls(Path(state_dir).resolve(), env)
        # A running cluster keeps the address it was started with (a restarted node joins it).
        cluster.bind = bind or env.get("PLASTICITY_BIND") or cluster.state().get("bind") or "127.0.0.1"
        return cluster

    @property
    def exposed(self) -> bool:
        """True when the servers listen beyond this machine's loopback."""
        return self.bind not in LOOPBACK

    # -- state ---------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"services": {}}

    def _save(self, state: dict) -> None:
        private_dir(self.state_dir)
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _ray_temp_dir(self) -> str:
        # Short: Ray's unix sockets live under it (path limit 107 bytes). Its own per
        # cluster so that a plain `ray.init()` elsewhere on this machine never joins it;
        # inside a folder of ours (0700, created by `start`) because Ray makes its own
        # folders world-writable. An unguessable name: nobody can create it first.
        state = self.state()
        if "ray_temp_dir" not in state:
            state["ray_temp_dir"] = f"/tmp/plc-{secrets.token_hex(5)}/h"
            self._save(state)
        return state["ray_temp_dir"]

    # -- what runs -----------------------------------------------------------------------
    def plan(self, workers: int | None = None) -> dict[str, tuple[str, dict[str, str]]]:
        """name -> (role, environment) for every process, from the compose file."""
        defined = services(self.env)
        names = list(defined)
        data_dir = self.state_dir / "data"
        plan = {}
        for service in defined.values():
            role = role_of(service)
            if role not in LOCAL_ROLES:
                continue
            env = {k: localise(v, names, data_dir, self.bind) for k, v in service.environment.items()}
            if "POSTGRES_HOST" in env:
                env["POSTGRES_HOST"] = self.env.get("POSTGRES_HOST", "127.0.0.1")
                env["POSTGRES_PORT"] = self.env.get("POSTGRES_PORT", "5432")
            if role.startswith("ray"):
                env["RAY_TEMP_DIR"] = self._ray_temp_dir()
                env["RAY_BIND_ADDRESS"] = self.bind
            if role == "ray-worker":
                for i in range(1, (workers if workers is not None else service.replicas) + 1):
                    # Its own temp dir, as on a separate machine: nodes sharing one would
                    # share (and garbage-collect) each other's job working directories.
                    temp = f"{Path(env['RAY_TEMP_DIR']).parent}/w{i}"
                    plan[f"ray-worker-{i}"] = (role, {**env, "RAY_TEMP_DIR": temp})
            else:
                plan[service.name] = (role, env)
        return plan

    def client_env(self) -> dict[str, str]:
        """What a client (ray job submit, MLflow, Optuna) needs to use this cluster."""
        head = self.plan(0)["ray-head"][1]
        keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "OPTUNA_STORAGE",
                "PLASTICITY_STORAGE_PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "MLFLOW_DISABLE_TELEMETRY")
        out = {k: head[k] for k in keys if k in head}
        out["RAY_ADDRESS"] = f"http://{connect_host(self.bind)}:{head.get('RAY_DASHBOARD_PORT', '8265')}"
        if not self.exposed:
            # A driver's ray.init("127.0.0.1:GCS_PORT") keeps the loopback address (see
            # cluster/raystart.py) instead of trying the network address nothing listens on.
            out["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return out

    # -- processes -----------------------------------------------------------------------
    def start(self, name: str, timeout: float = 180) -> int:
        """Start one process of the plan (no-op if it runs) and wait until it answers; if it
        does not, stop it again and raise."""
        plan = self.plan(self._workers_in_state(name))
        if name not in plan:
            raise ConfigError(f"no service {name!r}: choose one of {', '.join(plan)}")
        state = self.state()
        entry = state["services"].get(name)
        if entry and alive(entry):
            return entry["pid"]
        role, env = plan[name]
        logs = private_dir(self.state_dir / "logs")
        private_dir(self.state_dir / "data")
        private_dir(Path(env.get("RAY_TEMP_DIR", str(logs))).parent)
        if role == "ray-head":
            # Ray's fixed defaults (44217, 44227) would collide between clusters on one host.
            env["AUTOSCALER_METRIC_PORT"], env["DASHBOARD_METRIC_PORT"] = str(free_port()), str(free_port())
        if role.startswith("ray"):
            # Several nodes (and clusters) on one host: each gets its own agent and metrics ports.
            env["RAY_EXTRA_ARGS"] = " ".join(f"--{flag} {free_port()}" for flag in (
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                "metrics-export-port"))
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        log_path = logs / f"{name}.log"
        cmd = [sys.executable, "-m", "cluster.entrypoint", role]
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        entry = {"pid": proc.pid, "start_time": start_time(proc.pid), "cmdline": cmd, "role": role,
                 "log": str(log_path), "log_offset": log_path.stat().st_size}
        state = self.state()
        state["services"][name] = entry
        state["bind"] = self.bind
        self._save(state)
        try:
            self._wait_ready(name, role, env, proc, timeout)
        except BaseException:
            # Still our unreaped child: its pid (and group id) cannot have been reused.
            stop_group(proc.pid, signal.SIGTERM, 30, role.startswith("ray"))
            proc.poll()
            self._forget(name)
            raise
        # The entrypoint has exec'd the server by now: record the command line it runs
        # under, which is what `stop` and `down` compare before they send a signal.
        state = self.state()
        state["services"][name]["cmdline"] = redacted_cmdline(proc.pid) or cmd
        self._save(state)
        return proc.pid

    def _forget(self, name: str) -> None:
        state = self.state()
        state["services"].pop(name, None)
        self._save(state)

    def _workers_in_state(self, name: str) -> int | None:
        match = re.fullmatch(r"ray-worker-(\d+)", name)
        existing = [int(n.rsplit("-", 1)[1]) for n in self.state()["services"] if n.startswith("ray-worker-")]
        return max([int(match[1])] + existing) if match else None

    def _wait_ready(self, name: str, role: str, env: dict[str, str], proc: subprocess.Popen, timeout: float):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"{name} exited with status {proc.returncode}: "
                                  f"{last_error(Path(self.state()['services'][name]['log']))}")
            if role == "ray-worker":
                ready = self.node_count() >= 1 + self.running_workers()
            else:
                ready = entrypoint.healthy(role, env, timeout=2)
            if ready and role.startswith("ray"):
                # The node registers (and the dashboard answers) before `ray start` has
                # finished: on a loaded machine it can still time out and tear the node
                # down. Ready once it says so.
                ready = RAY_STARTED in self._log_since_start(name)
            if ready:
                if role == "mlflow":
                    self._first_request(env, deadline)
                return
            time.sleep(0.5)
        raise ConfigError(f"{name} did not answer within {timeout:.0f} s (log: {self.state_dir / 'logs'})")

    def _log_since_start(self, name: str) -> str:
        entry = self.state()["services"][name]
        with open(entry["log"], "rb") as f:
            f.seek(entry.get("log_offset", 0))
            return f.read().decode(errors="replace")

    @staticmethod
    def _first_request(env: dict[str, str], deadline: float) -> None:
        """One authenticated API call, given all the time left: /health answers before the
        server has loaded its handlers and the auth store, and a loaded machine can take
        longer than a client's quick probe (5 s) over that first real request."""
        import base64

        user = env.get("MLFLOW_ADMIN_USER", "admin")
        auth = base64.b64encode(f"{user}:{env.get('MLFLOW_ADMIN_PASSWORD', '')}".encode()).decode()
        url = (f"http://{connect_host(env.get('MLFLOW_HOST'))}:{env.get('MLFLOW_PORT', '5000')}"
               "/api/2.0/mlflow/experiments/search?max_results=1")
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
        try:
            with urllib.request.urlopen(request, timeout=max(5.0, deadline - time.time())):
                pass
        except (urllib.error.URLError, OSError):
            pass  # answered with an error or not at all: the client's own check will say so

    def running_workers(self) -> int:
        return sum(1 for n, e in self.state()["services"].items() if n.startswith("ray-worker-") and alive(e))

    def node_count(self) -> int:
        """Alive Ray nodes, from the head's dashboard API (with the token)."""
        env = self.client_env()
        request = urllib.request.Request(f"{env['RAY_ADDRESS']}/nodes?view=summary",
                                         headers={"Authorization": f"Bearer {env.get('RAY_AUTH_TOKEN', '')}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                nodes = json.load(response)["data"]["summary"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return 0
        return sum(1 for n in nodes if n.get("raylet", {}).get("state") == "ALIVE")

    def stop(self, name: str, kill: bool = False, timeout: float = 60) -> bool:
        """SIGTERM (or SIGKILL with kill=True) the process group of one service, if it is
        still the one this launcher started (pid, start time and command line match).
        False when there was nothing of ours to stop."""
        state = self.state()
        entry = state["services"].get(name)
        if entry is None:
            raise ConfigError(f"no service {name!r} in {self.state_path}: choose one of "
                              f"{', '.join(state['services']) or '(none started)'}")
        if not owned(entry):
            if pid_exists(entry["pid"]):
                print(f"cluster.local: not signalling pid {entry['pid']} ({name}): it is not the process this "
                      "launcher started (its start time or command line differ)", file=sys.stderr)
            return False
        # `ray start --block` stops its node in order when it alone gets SIGTERM (5 s); a
        # SIGTERM to the whole group leaves it waiting on dead children for a minute.
        leader_only = entry["role"].startswith("ray") and not kill
        return stop_group(entry["pid"], signal.SIGKILL if kill else signal.SIGTERM, timeout, leader_only,
                          owner=lambda: owned(entry))

    def up(self, workers: int | None = None) -> None:
        """Start every service; if one fails, stop the ones this call started and raise."""
        private_dir(self.state_dir)
        started = []
        try:
            for name in self.plan(workers):
                if not (self.state()["services"].get(name) and alive(self.state()["services"][name])):
                    started.append(name)
                self.start(name)
        except BaseException:
            for name in reversed(started):
                if name in self.state()["services"]:
                    self.stop(name)
                    self._forget(name)
            raise

    def down(self) -> None:
        # Workers first, the head, then MLflow: running trials end before their tracker's server.
        names = sorted(self.state()["services"], key=lambda n: (not n.startswith("ray-worker"), n != "ray-head"))
        for name in names:
            self.stop(name)
        temp = self.state().get("ray_temp_dir")
        state = self.state()
        state["services"] = {}
        state.pop("ray_temp_dir", None)
        state.pop("bind", None)
        self._save(state)
        if temp:
            shutil.rmtree(Path(temp).parent, ignore_errors=True)

    def status(self) -> dict[str, bool]:
        return {name: alive(entry) for name, entry in self.state()["services"].items()}


def token_file_warnings(env: dict[str, str], home: Path | None = None) -> list[str]:
    """Ray token files other users can read. The launcher passes the token in RAY_AUTH_TOKEN
    and writes none, but `ray get-auth-token --generate` and a bare `ray.init()` with
    RAY_AUTH_MODE=token write ~/.ray/auth_token, readable by everyone (0644)."""
    paths = [Path(env["RAY_AUTH_TOKEN_PATH"])] if env.get("RAY_AUTH_TOKEN_PATH") else []
    paths.append((home or Path.home()) / ".ray" / "auth_token")
    return [f"cluster.local: warning: the Ray token file {path} can be read by other users "
            f"(mode {path.stat().st_mode & 0o777:04o}): chmod 600 {path}"
            for path in paths if path.is_file() and path.stat().st_mode & 0o077]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default=".cluster", help="pids, logs, data (default .cluster/)")
    parser.add_argument("--env-file", type=Path, default=None, help="settings file (default .env in the repo)")
    parser.add_argument("--bind", default=None, metavar="ADDRESS",
                        help="address every server listens on (default $PLASTICITY_BIND, else 127.0.0.1: this "
                             "machine only); anything else needs --expose")
    parser.add_argument("--expose", action="store_true",
                        help="allow --bind beyond loopback (Ray's metrics endpoints have no login, and the token and "
                             "passwords travel unencrypted over HTTP)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start every service and wait until it answers")
    up.add_argument("--workers", type=int, default=None, help="Ray worker nodes (default RAY_WORKERS or 1)")
    sub.add_parser("down", help="stop every service (data is kept)")
    sub.add_parser("status", help="which services run, and the URLs")
    sub.add_parser("env", help="print `export` lines for clients (eval them)")
    for name in ("start", "stop"):
        p = sub.add_parser(name, help=f"{name} one service (mlflow, ray-head, ray-worker-N)")
        p.add_argument("service")
        if name == "stop":
            p.add_argument("--kill", action="store_true", help="SIGKILL instead of a clean stop (fault injection)")
    args = parser.parse_args(argv)
    try:
        if args.env_file is not None and not args.env_file.is_file():
            raise ConfigError(f"--env-file {args.env_file} does not exist: pass an existing file "
                              "(e.g. cp .env.example .env) or leave the flag out")
        cluster = Cluster.from_env(args.state_dir, args.env_file, bind=args.bind)
        if cluster.exposed and args.command in ("up", "start"):
            if not args.expose:
                raise ConfigError(f"--bind {cluster.bind} opens the cluster to the network: add --expose to confirm, "
                                  "or use the default 127.0.0.1 (this machine only)")
            print(f"cluster.local: warning: servers listen on {cluster.bind}: anyone who reaches this address reaches "
                  "Ray's metrics endpoints without a login, and the Ray token and MLflow passwords cross the "
                  "network unencrypted; put a TLS proxy and a firewall in front", file=sys.stderr)
        if args.command in ("up", "start"):
            for line in token_file_warnings(cluster.env):
                print(line, file=sys.stderr)
        if args.command == "up":
            cluster.up(args.workers)
            args.command = "status"
        if args.command == "down":
            cluster.down()
        elif args.command == "start":
            cluster.start(args.service)
        elif args.command == "stop":
            cluster.stop(args.service, kill=args.kill)
        elif args.command == "env":
            for key, value in cluster.client_env().items():
                print(f"export {key}={value!r}")
        if args.command == "status":
            env = cluster.client_env()
            for name, running in cluster.status().items():
                print(f"{name:14s} {'running' if running else 'stopped'}")
            print(f"Ray dashboard + job API: {env['RAY_ADDRESS']}   MLflow: {env.get('MLFLOW_TRACKING_URI')}")
    except ConfigError as e:
        print(f"cluster.local: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
