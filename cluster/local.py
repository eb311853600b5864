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
default 127.0.0.1), servers listen on 127.0.0.1 only, volumes are folders under the state
folder (`--state-dir`, default `.cluster/`), GPUs are the ones this machine has, and each
node gets its own ports for Ray's agents so that several nodes fit on one host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cluster import entrypoint
from cluster.settings import REPO, Service, resolve_env, services
from plasticity.errors import ConfigError

LOCAL_ROLES = ("mlflow", "ray-head", "ray-worker")
# Below the env file and the environment: sizes that suit one machine.
LOCAL_DEFAULTS = {"RAY_HEAD_CPUS": "1", "RAY_WORKER_CPUS": "1", "MLFLOW_WORKERS": "2", "POSTGRES_DB": "postgres"}
STATE_FILE = "cluster.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def role_of(service: Service) -> str | None:
    """`ROLE` of a service whose command is `python -m cluster.entrypoint ROLE`."""
    cmd = service.command
    if len(cmd) == 4 and cmd[1:3] == ["-m", "cluster.entrypoint"]:
        return cmd[3]
    return None


def localise(value: str, names: list[str], data_dir: Path) -> str:
    """Service host names -> 127.0.0.1, container volumes (/data/...) -> the state folder,
    0.0.0.0 -> 127.0.0.1 (nothing listens beyond this machine)."""
    for name in names:
        value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?=:\d)", "127.0.0.1", value)
    value = value.replace("0.0.0.0", "127.0.0.1")
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
    """The local cluster under `state_dir` (pids, logs, data)."""

    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, state_dir: Path | str = ".cluster", env_file: Path | None = None,
                 environ: dict[str, str] | None = None) -> Cluster:
        env = {**LOCAL_DEFAULTS, **resolve_env(env_file, environ)}
        configured = int(env.get("RAY_WORKER_GPUS") or 0)
        env["RAY_WORKER_GPUS"] = str(min(configured, gpu_count()))
        return cls(Path(state_dir).resolve(), env)

    # -- state ---------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {"services": {}}

    def _save(self, state: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _ray_temp_dir(self) -> str:
        # Short: Ray's unix sockets live under it (path limit 107 bytes). Its own per
        # cluster so that a plain `ray.init()` elsewhere on this machine never joins it.
        state = self.state()
        if "ray_temp_dir" not in state:
            state["ray_temp_dir"] = f"/tmp/plc-{os.getpid()}-{int(time.time()) % 100000}"
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
            env = {k: localise(v, names, data_dir) for k, v in service.environment.items()}
            if "POSTGRES_HOST" in env:
                env["POSTGRES_HOST"] = self.env.get("POSTGRES_HOST", "127.0.0.1")
                env["POSTGRES_PORT"] = self.env.get("POSTGRES_PORT", "5432")
            if role.startswith("ray"):
                env["RAY_TEMP_DIR"] = self._ray_temp_dir()
            if role == "ray-worker":
                for i in range(1, (workers if workers is not None else service.replicas) + 1):
                    # Its own temp dir, as on a separate machine: nodes sharing one would
                    # share (and garbage-collect) each other's job working directories.
                    plan[f"ray-worker-{i}"] = (role, {**env, "RAY_TEMP_DIR": f"{env['RAY_TEMP_DIR']}-w{i}"})
            else:
                plan[service.name] = (role, env)
        return plan

    def client_env(self) -> dict[str, str]:
        """What a client (ray job submit, MLflow, Optuna) needs to use this cluster."""
        head = self.plan(0)["ray-head"][1]
        keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "OPTUNA_STORAGE",
                "PLASTICITY_STORAGE_PATH", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
        out = {k: head[k] for k in keys if k in head}
        out["RAY_ADDRESS"] = f"http://127.0.0.1:{head.get('RAY_DASHBOARD_PORT', '8265')}"
        return out

    # -- processes -----------------------------------------------------------------------
    def start(self, name: str, timeout: float = 180) -> int:
        """Start one process of the plan (no-op if it runs) and wait until it answers."""
        plan = self.plan(self._workers_in_state(name))
        if name not in plan:
            raise ConfigError(f"no service {name!r}: choose one of {', '.join(plan)}")
        state = self.state()
        entry = state["services"].get(name)
        if entry and alive(entry["pid"]):
            return entry["pid"]
        role, env = plan[name]
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if role == "ray-worker":
            # Several nodes on one host: each gets its own agent and metrics ports.
            env["RAY_EXTRA_ARGS"] = " ".join(f"--{flag} {free_port()}" for flag in (
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                "metrics-export-port"))
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cluster.entrypoint", role], env=full_env, cwd=REPO,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        state = self.state()
        state["services"][name] = {"pid": proc.pid, "role": role, "log": str(logs / f"{name}.log")}
        self._save(state)
        self._wait_ready(name, role, env, proc, timeout)
        return proc.pid

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
            if ready:
                return
            time.sleep(0.5)
        raise ConfigError(f"{name} did not answer within {timeout:.0f} s (log: {self.state_dir / 'logs'})")

    def running_workers(self) -> int:
        return sum(1 for n, e in self.state()["services"].items() if n.startswith("ray-worker-") and alive(e["pid"]))

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
        """SIGTERM (or SIGKILL with kill=True) the process group of one service."""
        state = self.state()
        entry = state["services"].get(name)
        if entry is None:
            raise ConfigError(f"no service {name!r} in {self.state_path}: choose one of "
                              f"{', '.join(state['services']) or '(none started)'}")
        # `ray start --block` stops its node in order when it alone gets SIGTERM (5 s); a
        # SIGTERM to the whole group leaves it waiting on dead children for a minute.
        leader_only = entry["role"].startswith("ray") and not kill
        return stop_group(entry["pid"], signal.SIGKILL if kill else signal.SIGTERM, timeout, leader_only)

    def up(self, workers: int | None = None) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for name in self.plan(workers):
            self.start(name)

    def down(self) -> None:
        # Workers first, the head, then MLflow: running trials end before their tracker's server.
        names = sorted(self.state()["services"], key=lambda n: (not n.startswith("ray-worker"), n != "ray-head"))
        for name in names:
            self.stop(name)
        temp = self.state().get("ray_temp_dir")
        state = self.state()
        state["services"] = {}
        state.pop("ray_temp_dir", None)
        self._save(state)
        if temp:
            for path in [Path(temp), *Path(temp).parent.glob(f"{Path(temp).name}-w*")]:
                shutil.rmtree(path, ignore_errors=True)

    def status(self) -> dict[str, bool]:
        return {name: alive(entry["pid"]) for name, entry in self.state()["services"].items()}


def last_error(log: Path) -> str:
    """The last line of a log that names an error (else its last line), and the log."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|exception", ln, re.I)]
    return f"{(errors or lines or ['no output'])[-1][:300]} (log: {log})"


def alive(pgid: int) -> bool:
    """A process group with a live (not zombie) process in it."""
    return _group_members(pgid) > 0


def alive_pid(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _group_members(pgid: int) -> int:
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            count += 1
    return count


def stop_group(pgid: int, sig: int, timeout: float, leader_only: bool = False) -> bool:
    """Signal a process group (or only its leader) and wait until no live process is left
    in it; SIGKILL what is left after `timeout`."""
    try:
        os.kill(pgid, sig) if leader_only and alive_pid(pgid) else os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _group_members(pgid) == 0:
            return True
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default=".cluster", help="pids, logs, data (default .cluster/)")
    parser.add_argument("--env-file", type=Path, default=None, help="settings file (default .env in the repo)")
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
        cluster = Cluster.from_env(args.state_dir, args.env_file)
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
