"""Secrets, listening addresses and process ownership of the local cluster (`cluster.local`).

Fast tests: errors that name a URL with a password (the redact helper itself is
tests/test_redact.py), the ownership check on real processes (a recorded pid whose start
time or command line differs is never signalled), and the launcher's one-line refusals
(missing --env-file, --bind without --expose).

Slow tests share one cluster started by the launcher on the local PostgreSQL with
distinctive secrets (MLflow with basic auth, a Ray head with token auth, one worker
node): a first `up` is made to fail on its second service (its GCS port taken) and must
leave nothing running; then every started process's /proc/PID/cmdline, every file under
the state and run-time folders, MLflow params, cluster.json and the folder modes are
checked for the secrets, and the listening sockets of every process the launcher started
(read from /proc/net/tcp{,6}) must all be on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster.local import Cluster
from cluster.processes import alive, free_port, owned, redacted_cmdline, start_time
from plasticity.errors import ConfigError, TrackingError
from plasticity.redact import redact

REPO = Path(__file__).resolve().parents[1]


def test_errors_naming_a_url_hide_its_password(tmp_path):
    """A tracking server and an Optuna storage that cannot be used: the one-line errors
    name the URL (user, host, port) without the password."""
    from tune.stores import check_optuna_storage

    secret = f"Pw{uuid.uuid4().hex[:8]}Quokka"
    with pytest.raises(TrackingError) as err:
        from plasticity.tracking.mlflow import check_tracking

        check_tracking(f"http://admin:{secret}@127.0.0.1:{free_port()}")
    assert secret not in str(err.value) and "admin:***@127.0.0.1" in str(err.value)
    # The local PostgreSQL accepts any password (trust): a database that does not exist fails.
    with pytest.raises(ConfigError) as err:
        check_optuna_storage(f"postgresql+psycopg://postgres:{secret}@127.0.0.1:5432/plc_missing_{uuid.uuid4().hex[:6]}")
    # Probed before Optuna opens it (plasticity/tracking/database.py): host, port and database.
    assert secret not in str(err.value) and "PostgreSQL server at 127.0.0.1:5432 has no database" in str(err.value)


def test_world_readable_token_files_are_named(tmp_path):
    from cluster.local import token_file_warnings

    token = tmp_path / "token"
    token.write_text("x" * 64)
    token.chmod(0o644)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("y" * 64)
    (tmp_path / ".ray" / "auth_token").chmod(0o600)
    warnings = token_file_warnings({"RAY_AUTH_TOKEN_PATH": str(token)}, home=tmp_path)
    assert warnings == [f"cluster.local: warning: the Ray token file {token} can be read by other users "
                        f"(mode 0644): chmod 600 {token}"]
    token.chmod(0o600)
    assert token_file_warnings({"RAY_AUTH_TOKEN_PATH": str(token)}, home=tmp_path) == []


# -- ownership ---------------------------------------------------------------------------------

def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def test_stop_signals_only_the_process_it_recorded(tmp_path):
    """A recorded pid whose start time or command line differs from cluster.json is not
    signalled (the pid was reused by another program); the matching one is stopped."""
    proc = _sleeper()
    try:
        time.sleep(0.3)  # past the exec: the command line is the sleeper's
        real = {"pid": proc.pid, "start_time": start_time(proc.pid), "cmdline": redacted_cmdline(proc.pid),
                "role": "mlflow", "log": str(tmp_path / "x.log")}
        assert owned(real) and alive(real)
        cluster = Cluster(tmp_path / "state")
        for name, fake in {"other-start": {**real, "start_time": real["start_time"] - 1},
                           "other-command": {**real, "cmdline": ["/usr/bin/something-else"]},
                           "no-record": {k: v for k, v in real.items() if k != "start_time"}}.items():
            assert not owned(fake)
            cluster._save({"services": {"mlflow": fake}})
            assert cluster.stop("mlflow", kill=True) is False
            assert cluster.status() == {"mlflow": False}
            time.sleep(0.2)
            assert proc.poll() is None, f"{name}: a process the launcher did not start was signalled"
        cluster._save({"services": {"mlflow": real}})
        cluster.down()
        assert proc.wait(timeout=30) == -signal.SIGTERM
        assert cluster.state()["services"] == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_group_whose_leader_is_gone_is_still_ours(tmp_path):
    """The leader (the entrypoint) died but a child of it lives on in its group: `down`
    still stops that child; an entry recorded before the group existed does not."""
    script = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(0.5)")
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    entry = {"pid": leader.pid, "start_time": start_time(leader.pid), "cmdline": ["x"], "role": "ray-worker",
             "log": str(tmp_path / "x.log")}
    leader.wait(timeout=30)  # reaped: only the orphaned child is left in the group
    children = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                if _fields(p) and int(_fields(p)[2]) == leader.pid]
    assert len(children) == 1
    try:
        assert owned(entry) and alive(entry)
        assert not owned({**entry, "start_time": entry["start_time"] + 10 ** 9})  # "started after" its members
        cluster = Cluster(tmp_path / "state")
        cluster._save({"services": {"ray-worker-1": entry}})
        cluster.down()
        assert not Path(f"/proc/{children[0]}").exists() or _fields(Path(f"/proc/{children[0]}/stat"))[0] == "Z"
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _fields(stat: Path) -> list[str] | None:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


# -- the launcher's refusals -----------------------------------------------------------------

def _launcher(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.local", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_missing_env_file_is_one_line_and_exit_2(tmp_path):
    proc = _launcher("--state-dir", str(tmp_path / "s"), "--env-file", str(tmp_path / "nope.env"), "up")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"cluster.local: error: --env-file {tmp_path / 'nope.env'} does not exist: pass an existing file "
        "(e.g. cp .env.example .env) or leave the flag out"]
    assert not (tmp_path / "s").exists()


def test_binding_beyond_loopback_needs_expose(tmp_path):
    env_file = tmp_path / "x.env"
    env_file.write_text("POSTGRES_PASSWORD=a\nMLFLOW_ADMIN_PASSWORD=b\nMLFLOW_SECRET_KEY=c\nRAY_AUTH_TOKEN=d\n")
    for args, env in ((["--bind", "0.0.0.0"], {}), ([], {"PLASTICITY_BIND": "0.0.0.0"})):
        proc = _launcher("--state-dir", str(tmp_path / "s"), "--env-file", str(env_file), *args, "up", env=env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "add --expose" in proc.stderr
        assert not (tmp_path / "s" / "cluster.json").exists()
    # Asked for: the plan binds there, and clients still connect through loopback.
    cluster = Cluster.from_env(tmp_path / "s", env_file, environ={}, bind="0.0.0.0")
    plan = cluster.plan(1)
    assert plan["mlflow"][1]["MLFLOW_HOST"] == "0.0.0.0" and plan["ray-head"][1]["RAY_DASHBOARD_HOST"] == "0.0.0.0"
    assert plan["ray-worker-1"][1]["RAY_BIND_ADDRESS"] == "0.0.0.0"
    assert cluster.client_env()["RAY_ADDRESS"].startswith("http://127.0.0.1:")
    default = Cluster.from_env(tmp_path / "s", env_file, environ={}).plan(1)
    assert default["mlflow"][1]["MLFLOW_HOST"] == "127.0.0.1"
    assert {env["RAY_BIND_ADDRESS"] for role, env in default.values() if role.startswith("ray")} == {"127.0.0.1"}


def test_compose_publishes_ports_on_the_bind_address():
    from cluster.settings import services

    secrets = {"POSTGRES_PASSWORD": "a", "MLFLOW_ADMIN_PASSWORD": "b", "MLFLOW_SECRET_KEY": "c", "RAY_AUTH_TOKEN": "d"}
    published = [p for s in services(secrets).values() for p in s.ports]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    opened = [p for s in services({**secrets, "PLASTICITY_BIND": "0.0.0.0"}).values() for p in s.ports]
    # optuna-dashboard has no login: loopback whatever PLASTICITY_BIND says.
    assert sorted(p.split(":")[0] for p in opened) == ["0.0.0.0"] * (len(opened) - 1) + ["127.0.0.1"]
    gcs = services(secrets)["ray-head"].environment["RAY_GCS_PORT"]
    assert gcs != "6379", "Redis's port"


def test_service_commands_carry_no_secret(monkeypatch):
    """Every role's command line, built from the compose file's environment: no secret
    (the mlflow role's, on the real PostgreSQL: tests/test_cluster_config.py)."""
    from cluster import entrypoint
    from cluster.local import role_of
    from cluster.settings import services

    secrets = {"POSTGRES_PASSWORD": "PgQuokka1", "MLFLOW_ADMIN_PASSWORD": "AdmQuokka2",
               "MLFLOW_SECRET_KEY": "KeyQuokka3", "RAY_AUTH_TOKEN": "TokQuokka4" * 6}
    # optuna-dashboard is in the image, not in the dev environment: only its presence is faked.
    monkeypatch.setattr(entrypoint, "has_module", lambda name: True)
    for name, service in services(secrets).items():
        role = role_of(service)
        if role in (None, "mlflow"):
            continue
        with monkeypatch.context() as m:
            for key, value in service.environment.items():
                m.setenv(key, value)
            cmd, _ = entrypoint.COMMANDS[role]()
        assert cmd and not [v for v in secrets.values() if any(v in arg for arg in cmd)], (name, cmd)


# -- a real cluster ---------------------------------------------------------------------------

def _stat_all() -> dict[int, list[str]]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _fields(stat)
        if fields is not None:
            out[int(stat.parent.name)] = fields
    return out


def family(roots: set[int]) -> set[int]:
    """`roots`, the processes in their sessions or groups, and all their descendants."""
    procs = _stat_all()
    keep = {pid for pid in roots if pid in procs}
    grown = True
    while grown:
        grown = False
        for pid, f in procs.items():
            if pid not in keep and (int(f[1]) in keep or int(f[2]) in roots or int(f[3]) in roots):
                keep.add(pid)
                grown = True
    return keep


def listening(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state held by `pids`."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, family_ in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = f[1].split(":")
            raw = bytes.fromhex(hexaddr)
            # /proc/net prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((socket.inet_ntop(family_, raw), int(hexport, 16), inodes[f[9]]))
    return sorted(out)


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1" or address.startswith("::ffff:127.")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One cluster for the module, after a failed `up` (see the module docstring)."""
    import psycopg

    secret = f"Pw{uuid.uuid4().hex[:8]}ZebraQuokka"
    secrets = {"POSTGRES_PASSWORD": secret, "MLFLOW_ADMIN_PASSWORD": f"Adm{secret}",
               "MLFLOW_SECRET_KEY": f"Key{secret}", "RAY_AUTH_TOKEN": f"Tok{uuid.uuid4().hex}{uuid.uuid4().hex}"}
    suffix = uuid.uuid4().hex[:8]
    dbs = {key: f"plc_sec_{key.split('_')[-2].lower()}_{suffix}"
           for key in ("MLFLOW_DB", "MLFLOW_AUTH_DB", "OPTUNA_DB")}
    env = {**os.environ, **dbs, **secrets, "POSTGRES_USER": "postgres", "POSTGRES_DB": "test",
           "MLFLOW_PORT": str(free_port()), "RAY_GCS_PORT": str(free_port()),
           "RAY_DASHBOARD_PORT": str(free_port()), "RAY_CLIENT_PORT": str(free_port()),
           "RAY_HEAD_CPUS": "1", "RAY_WORKER_CPUS": "1", "RAY_WORKERS": "1", "MLFLOW_WORKERS": "1"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                "OPTUNA_STORAGE", "PLASTICITY_STORAGE_PATH", "RAY_AUTH_MODE", "PLASTICITY_BIND"):
        env.pop(key, None)
    root = tmp_path_factory.mktemp("secure")
    cluster = Cluster.from_env(root / "state", env_file=root / "no.env", environ=env)
    failed = {}
    try:
        # A failed `up`: MLflow starts, then the head's `ray start` rejects its CPU count.
        cluster.env["RAY_HEAD_CPUS"] = "not-a-number"
        with pytest.raises(ConfigError) as err:
            cluster.up(workers=1)
        failed["error"] = str(err.value)
        failed["state"] = cluster.state()
        failed["mlflow_listening"] = _port_open(int(env["MLFLOW_PORT"]))
        cluster.env["RAY_HEAD_CPUS"] = "1"
        cluster.up()
        yield cluster, secrets, failed
    finally:
        cluster.down()
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", autocommit=True) as conn:
            for name in dbs.values():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _started(cluster: Cluster) -> set[int]:
    return family({entry["pid"] for entry in cluster.state()["services"].values()})


@pytest.mark.slow
def test_a_failed_up_stops_what_it_started(stack):
    _, secrets, failed = stack
    assert failed["error"].startswith("ray-head exited with status"), failed["error"]
    assert failed["state"]["services"] == {} and not failed["mlflow_listening"]
    assert not any(s in failed["error"] for s in secrets.values())


@pytest.mark.slow
def test_no_secret_in_any_command_line(stack):
    cluster, secrets, _ = stack
    pids = _started(cluster)
    assert len(pids) >= 10, "the launcher's processes were not found"  # MLflow + 2 Ray nodes' processes
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        for name, value in secrets.items():
            assert value not in cmdline, f"{name} in the command line of pid {pid}: {redact(cmdline)[:200]}"


@pytest.mark.slow
def test_no_secret_in_logs_state_or_mlflow_params_and_private_modes(stack):
    cluster, secrets, _ = stack
    state = cluster.state()
    assert set(state["services"]) == {"mlflow", "ray-head", "ray-worker-1"}
    for entry in state["services"].values():
        assert entry["start_time"] == start_time(entry["pid"]) and entry["cmdline"] == redacted_cmdline(entry["pid"])
    run_dir = Path(state["ray_temp_dir"]).parent
    auth_ini = Path(cluster.plan(0)["mlflow"][1]["MLFLOW_AUTH_CONFIG_PATH"])
    checked, lines = 0, 0
    for root in (cluster.state_dir, run_dir):
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue  # a socket or a file removed meanwhile
            checked += 1
            lines += data.count(b"\n")
            if path == auth_ini:  # MLflow reads the auth database's URL only from this file
                assert path.stat().st_mode & 0o777 == 0o600
                continue
            for name, value in secrets.items():
                assert value.encode() not in data, f"{name} in {path}"
    assert checked > 20 and lines > 100, (checked, lines)  # Ray's and MLflow's logs were there
    for folder in (cluster.state_dir, cluster.state_dir / "logs", cluster.state_dir / "data", auth_ini.parent, run_dir):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    for path in [cluster.state_path, *(cluster.state_dir / "logs").iterdir()]:
        assert path.stat().st_mode & 0o777 == 0o600, path

    # A sweep's params name its storage URL: MLflow stores it redacted.
    from plasticity.tracking.mlflow import MlflowTracker

    env = cluster.client_env()
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    try:
        tracker = MlflowTracker.open(env["MLFLOW_TRACKING_URI"], "secrets", "params",
                                     {"storage": env["OPTUNA_STORAGE"], "lr": 0.1}, tags={"db": env["OPTUNA_STORAGE"]})
        run = tracker.client.get_run(tracker.run_id)
        assert secrets["POSTGRES_PASSWORD"] in env["OPTUNA_STORAGE"]
        assert run.data.params["storage"] == redact(env["OPTUNA_STORAGE"]) and ":***@" in run.data.params["storage"]
        assert secrets["POSTGRES_PASSWORD"] not in json.dumps([run.data.params, run.data.tags])
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)


@pytest.mark.slow
def test_every_server_listens_on_loopback_only(stack):
    cluster, _, _ = stack
    pids = _started(cluster)
    sockets = listening(pids)
    print("\n".join(f"{a}:{p} pid {pid} {Path(f'/proc/{pid}/comm').read_text().strip()}" for a, p, pid in sockets))
    ports = {p for _, p, _ in sockets}
    head, mlflow = cluster.plan(0)["ray-head"][1], cluster.plan(0)["mlflow"][1]
    expected = {int(head[k]) for k in ("RAY_GCS_PORT", "RAY_DASHBOARD_PORT", "RAY_CLIENT_PORT")}
    assert expected | {int(mlflow["MLFLOW_PORT"])} <= ports, "a server was not found among the launcher's sockets"
    assert len(sockets) >= 10  # GCS, 2 raylets x 2 (node + object manager), agents, metrics, ...
    outside = [(a, p, pid) for a, p, pid in sockets if not is_loopback(a)]
    assert not outside, f"listening beyond loopback: {outside}"


@pytest.mark.slow
def test_jobs_and_tasks_run_on_the_loopback_cluster(stack):
    """A job's driver on the head joins the loopback cluster and runs a task on the worker."""
    cluster, _, _ = stack
    env = cluster.client_env()
    code = ("import ray; ray.init(); "
            "print('nodes', sum(n['Alive'] for n in ray.nodes()), set(n['NodeManagerAddress'] for n in ray.nodes())); "
            "print('task on', ray.get(ray.remote(resources={'plasticity_worker': 0.1})"
            "(lambda: ray.util.get_node_ip_address()).remote()))")
    proc = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", env["RAY_ADDRESS"],
                           "--", "python", "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "nodes 2 {'127.0.0.1'}" in proc.stdout and "task on 127.0.0.1" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_down_stops_every_process_it_started(stack):
    cluster, _, _ = stack
    pids = _started(cluster)
    run_dir = Path(cluster.state()["ray_temp_dir"]).parent
    cluster.down()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.5)
    assert not [pid for pid in pids if _alive(pid)]
    assert cluster.state()["services"] == {} and not run_dir.exists()


def _alive(pid: int) -> bool:
    fields = _fields(Path(f"/proc/{pid}/stat"))
    return fields is not None and fields[0] != "Z"
