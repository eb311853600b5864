"""Container entrypoints of the cluster (docker-compose.yml, KubeRay) and of the local
launcher (`python -m cluster.local`): every setting comes from the environment, so the
same command runs in a container and as a local process.

    python -m cluster.entrypoint mlflow            # MLflow server, basic auth, backend in PostgreSQL
    python -m cluster.entrypoint ray-head          # Ray head: GCS, dashboard + job API, token auth
    python -m cluster.entrypoint ray-worker        # a Ray node joining $RAY_HEAD_ADDRESS
    python -m cluster.entrypoint optuna-dashboard  # optuna-dashboard on $OPTUNA_STORAGE
    python -m cluster.entrypoint health ROLE       # exit 0 when ROLE answers (compose healthcheck)

Each role checks its settings and stops with one line naming the missing variable, then
replaces itself (exec) with the server, so signals reach the server directly.

Secrets never go on a command line (every user of the machine can read those in `ps`):
the MLflow backend store URL travels in MLFLOW_BACKEND_STORE_URI, the auth database URL
in a 0600 file, the Ray token in RAY_AUTH_TOKEN. RAY_BIND_ADDRESS (set by the local
launcher; unset in containers) binds every Ray server of the node to that address.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from plasticity.errors import ConfigError
from plasticity.redact import redact

ROLES = ("mlflow", "ray-head", "ray-worker", "optuna-dashboard")


def need(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"{name} is not set: put it in .env (see .env.example) or the service's environment")
    return value


def postgres_url(database: str, driver: str = "postgresql+psycopg") -> str:
    """URL of `database` on the cluster's PostgreSQL (password URL-quoted)."""
    user = quote(os.environ.get("POSTGRES_USER", "postgres"), safe="")
    password = os.environ.get("POSTGRES_PASSWORD", "")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host, port = os.environ.get("POSTGRES_HOST", "127.0.0.1"), os.environ.get("POSTGRES_PORT", "5432")
    return f"{driver}://{auth}@{host}:{port}/{database}"


def ensure_databases(names: list[str]) -> None:
    """Create the databases the services use if they do not exist yet (idempotent)."""
    import psycopg

    maintenance = os.environ.get("POSTGRES_DB", "postgres")
    try:
        conn = psycopg.connect(postgres_url(maintenance, "postgresql"), autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        first = (redact(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"cannot connect to PostgreSQL at {os.environ.get('POSTGRES_HOST', '127.0.0.1')}:"
                          f"{os.environ.get('POSTGRES_PORT', '5432')} ({first}): start it or fix POSTGRES_*") from None
    with conn, conn.cursor() as cur:
        for name in names:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')


def write_auth_config(path: Path) -> Path:
    """basic_auth.ini for `mlflow server --app-name basic-auth`: users in PostgreSQL, no
    access without credentials (default_permission applies to authenticated users only).
    The admin password is not written here: MLflow reads MLFLOW_AUTH_ADMIN_PASSWORD."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written 0600 from the start: it names the database (with its password).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[mlflow]\n"
                f"default_permission = {os.environ.get('MLFLOW_DEFAULT_PERMISSION', 'READ')}\n"
                f"database_uri = {postgres_url(os.environ.get('MLFLOW_AUTH_DB', 'mlflow_auth'))}\n"
                f"admin_username = {os.environ.get('MLFLOW_ADMIN_USER', 'admin')}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # Every request is checked against a scrypt hash (~0.1 s of CPU): cache a
                # verified password this long. A changed password may keep working on
                # other server workers until it expires.
                f"auth_cache_ttl_seconds = {int(os.environ.get('MLFLOW_AUTH_CACHE_TTL_S', '60'))}\n")
    return path


def mlflow_command() -> tuple[list[str], dict[str, str]]:
    password = need("MLFLOW_ADMIN_PASSWORD")
    mlflow_db = os.environ.get("MLFLOW_DB", "mlflow")
    auth_db = os.environ.get("MLFLOW_AUTH_DB", "mlflow_auth")
    ensure_databases([mlflow_db, auth_db, os.environ.get("OPTUNA_DB", "optuna")])
    config = write_auth_config(Path(need("MLFLOW_AUTH_CONFIG_PATH")))
    artifacts = need("MLFLOW_ARTIFACTS_DESTINATION")
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    # The backend URL holds the database password: `mlflow server` reads it from
    # MLFLOW_BACKEND_STORE_URI, so it stays out of the command line.
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": os.environ.get(
        "MLFLOW_ADMIN_USER", "admin"), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_BACKEND_STORE_URI": postgres_url(mlflow_db)}
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--serve-artifacts",
           "--artifacts-destination", artifacts,
           "--host", os.environ.get("MLFLOW_HOST", "0.0.0.0"), "--port", os.environ.get("MLFLOW_PORT", "5000"),
           "--workers", os.environ.get("MLFLOW_WORKERS", "4"),
           "--allowed-hosts", os.environ.get("MLFLOW_ALLOWED_HOSTS", "localhost,localhost:*,127.0.0.1,127.0.0.1:*")]
    return cmd, env


def _ray() -> str:
    return shutil.which("ray") or str(Path(sys.executable).parent / "ray")


LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY = ("0.0.0.0", "::", "")


def _ray_start(node_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """`ray start` and its extra environment for RAY_BIND_ADDRESS: loopback -> every Ray
    server of the node on 127.0.0.1; an address -> that address; unset/0.0.0.0 -> Ray's
    own choice (all interfaces: containers, where Docker publishes the ports)."""
    bind = os.environ.get("RAY_BIND_ADDRESS", "")
    if bind in ANY:
        return [_ray(), *node_args], {}
    if bind not in LOOPBACK:
        return [_ray(), *node_args, "--node-ip-address", bind], {}
    # Ray binds its gRPC servers, agents and metrics endpoints to localhost only when the
    # node's IP is 127.0.0.1, but `ray start` replaces 127.0.0.1 by the machine's network
    # address; cluster.raystart keeps it. Drivers started on the head (ray job submit)
    # inherit RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which makes their ray.init() keep it too;
    # the worker's own `ray start` needs it on (it refuses to join a cluster otherwise).
    head = "--head" in node_args
    return ([sys.executable, "-m", "cluster.raystart", *node_args, "--node-ip-address", "127.0.0.1"],
            {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0" if head else "1"})


def _ray_common(cpus_var: str, gpus_var: str) -> list[str]:
    # Token authentication: Ray reads the token from RAY_AUTH_TOKEN.
    if os.environ.get("RAY_AUTH_MODE") != "token":
        raise ConfigError("RAY_AUTH_MODE must be 'token': the job API must not run without authentication")
    need("RAY_AUTH_TOKEN")
    args = ["--block", "--disable-usage-stats"]
    for var, flag in ((cpus_var, "--num-cpus"), (gpus_var, "--num-gpus")):
        if os.environ.get(var):
            args += [flag, os.environ[var]]
    if os.environ.get("RAY_TEMP_DIR"):
        args += ["--temp-dir", os.environ["RAY_TEMP_DIR"]]
    return args + shlex.split(os.environ.get("RAY_EXTRA_ARGS", ""))


def ray_head_command() -> tuple[list[str], dict[str, str]]:
    return _ray_start(["start", "--head", "--port", os.environ.get("RAY_GCS_PORT", "6380"),
                       "--dashboard-host", os.environ.get("RAY_DASHBOARD_HOST", "0.0.0.0"),
                       "--dashboard-port", os.environ.get("RAY_DASHBOARD_PORT", "8265"),
                       "--ray-client-server-port", os.environ.get("RAY_CLIENT_PORT", "10001"),
                       *_ray_common("RAY_HEAD_CPUS", "RAY_HEAD_GPUS")])


def ray_worker_command() -> tuple[list[str], dict[str, str]]:
    # "plasticity_worker" marks the node (visible in the dashboard and to tests); trials
    # do not require it, so they can move to any node when one is lost.
    return _ray_start(["start", "--address", need("RAY_HEAD_ADDRESS"), "--resources", '{"plasticity_worker": 1}',
                       *_ray_common("RAY_WORKER_CPUS", "RAY_WORKER_GPUS")])


# `optuna-dashboard STORAGE` would put the storage URL (with its password) on the command
# line: the server is started through its Python API with the URL from the environment.
OPTUNA_DASHBOARD_SERVE = ("import os, optuna_dashboard; optuna_dashboard.run_server(os.environ['OPTUNA_STORAGE'], "
                          "host=os.environ.get('OPTUNA_DASHBOARD_HOST', '0.0.0.0'), "
                          "port=int(os.environ.get('OPTUNA_DASHBOARD_PORT', '8080')))")


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def optuna_dashboard_command() -> tuple[list[str], dict[str, str]]:
    if not has_module("optuna_dashboard"):
        raise ConfigError("optuna-dashboard is not installed: pip install optuna-dashboard (the image has it)")
    need("OPTUNA_STORAGE")
    return [sys.executable, "-c", OPTUNA_DASHBOARD_SERVE], {}


COMMANDS = {"mlflow": mlflow_command, "ray-head": ray_head_command, "ray-worker": ray_worker_command,
            "optuna-dashboard": optuna_dashboard_command}


def connect_host(bind: str | None) -> str:
    """Where a client on this machine reaches a server bound to `bind`."""
    return "127.0.0.1" if (bind or "") in ANY + LOOPBACK else bind


def health_url(role: str, env: dict[str, str]) -> str | None:
    if role == "mlflow":
        return f"http://{connect_host(env.get('MLFLOW_HOST'))}:{env.get('MLFLOW_PORT', '5000')}/health"
    if role == "ray-head":
        host = connect_host(env.get("RAY_DASHBOARD_HOST"))
        return f"http://{host}:{env.get('RAY_DASHBOARD_PORT', '8265')}/api/version"
    if role == "optuna-dashboard":
        return f"http://127.0.0.1:{env.get('OPTUNA_DASHBOARD_PORT', '8080')}/"
    return None


def healthy(role: str, env: dict[str, str] | None = None, timeout: float = 5.0) -> bool:
    """True when ROLE answers: an HTTP 200 for the servers, a running raylet for a worker
    (one node per container). `env`: the service's settings (default: this process's)."""
    env = dict(os.environ) if env is None else env
    url = health_url(role, env)
    if url is None:
        return _raylet_running()
    request = urllib.request.Request(url)
    if role == "ray-head" and env.get("RAY_AUTH_TOKEN"):
        request.add_header("Authorization", f"Bearer {env['RAY_AUTH_TOKEN']}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _raylet_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "raylet":
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["health"] and len(argv) == 2 and argv[1] in ROLES:
        return 0 if healthy(argv[1]) else 1
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: python -m cluster.entrypoint {{{','.join(ROLES)}}} | health ROLE", file=sys.stderr)
        return 2
    try:
        cmd, env = COMMANDS[argv[0]]()
    except ConfigError as e:
        print(f"cluster.entrypoint {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, {**os.environ, **env})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
