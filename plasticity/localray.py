"""Edge: the private local Ray a command starts for itself, on 127.0.0.1 with a fresh token.

    from plasticity.localray import start_local_ray
    token_file = start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)

`plasticity sweep` and `plasticity serve` without an address (and the benchmarks) start
Ray through this one function; joining an existing cluster (`--address`, RAY_ADDRESS)
does not come here. Ray is imported inside the functions only: the core never imports it.

What a plain `ray.init()` does on Linux (Ray 2.60), and what this changes:

- Node address. Ray binds its gRPC servers (GCS, raylet, object manager, every worker),
  the dashboard and runtime-env agents and the metrics endpoints to localhost only when
  the node's IP is 127.0.0.1; otherwise to all interfaces or the machine's address. A
  plain `ray.init()` takes the network address, and even `_node_ip_address="127.0.0.1"`
  is swapped for it (`services.resolve_ip_for_localhost`) unless
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what cluster/entrypoint.py sets for its drivers).
  It is set in the environment, which the raylet, the agents and every worker inherit,
  and in this process's already imported `ray_constants`.
- Token. Ray 2.60 turns token authentication on for a new local cluster and, lacking a
  token, writes one to ~/.ray/auth_token (mode 0644, shared by every later start).
  Here each start gets its own token (256 bits) in a 0600 file inside a 0700 folder of
  its own, named by RAY_AUTH_TOKEN_PATH (Ray reads it from there; a RAY_AUTH_TOKEN meant
  for another cluster, which would take precedence, is dropped from this process). The
  token never goes on a command line or into a log; the folder is removed at exit.
- Ray Serve. Its replicas start their inter-deployment gRPC server on `[::]:0` (all
  interfaces) whatever the node's address (ray/serve/_private/replica.py, 2.60);
  `serve=True` installs `serve_replicas_on_loopback` as the workers' setup hook.
- Fixed ports. The autoscaler's and the dashboard's metrics ports (44217, 44227) are
  free ports instead, so that two local Rays on one machine do not collide.

PLASTICITY_BIND (the local launcher's variable, cluster/local.py) opens Ray to the
network when asked: `0.0.0.0` -> Ray's own choice (all interfaces / the network
address), an address -> that address; unset or loopback -> 127.0.0.1. The token stays on.

May import: nothing
May import in functions: ray
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

BIND_ENV = "PLASTICITY_BIND"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY = ("0.0.0.0", "::", "")
# Read by Ray's monitor and dashboard processes at import (ray/autoscaler/_private/constants.py,
# ray/dashboard/consts.py): fixed defaults otherwise.
METRIC_PORT_VARS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def resolve_bind(bind: str | None = None) -> str:
    """The address the local Ray listens on: `bind`, else $PLASTICITY_BIND, else 127.0.0.1."""
    return (bind if bind is not None else os.environ.get(BIND_ENV, "")).strip() or "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_token(folder: Path) -> Path:
    """A fresh random token in `folder`/token, created with mode 0600."""
    path = folder / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _use_token(token_file: Path) -> None:
    """Token authentication with the token in `token_file`, for this process and its children."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    # This process may have read its settings before (ray imported earlier): read them
    # again, as Ray's own `_enable_token_auth` does, and forget a token loaded before.
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _keep_loopback() -> None:
    import ray._private.ray_constants as ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def serve_replicas_on_loopback() -> None:
    """Worker setup hook (runs in every worker process of a loopback Ray that serves):
    a Serve replica's inter-deployment gRPC server binds 127.0.0.1 instead of `[::]`.
    Its peers reach it at the node's address, 127.0.0.1 here."""
    import ray.serve._private.replica as replica

    bind = replica.add_port_to_grpc_server

    def on_loopback(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.removeprefix("[::]:")
        return bind(server, address)

    replica.add_port_to_grpc_server = on_loopback


def start_local_ray(bind: str | None = None, serve: bool = False, **init_kwargs) -> Path:
    """`ray.init(**init_kwargs)` of a new local Ray bound to `resolve_bind(bind)`, token
    authentication on with a fresh token; returns the token file (removed at exit).
    `include_dashboard=True` puts the dashboard on the same address; `serve=True`: the
    Ray Serve replicas' own gRPC servers too."""
    import ray

    host = resolve_bind(bind)
    folder = Path(tempfile.mkdtemp(prefix="plasticity-ray-"))  # mode 0700
    # Registered before ray.init registers its own shutdown: atexit runs this one after it.
    atexit.register(shutil.rmtree, folder, True)
    try:
        _use_token(write_token(folder))
        for var in METRIC_PORT_VARS:
            os.environ.setdefault(var, str(_free_port()))
        if host in LOOPBACK:
            _keep_loopback()
            init_kwargs.update(_node_ip_address="127.0.0.1", dashboard_host="127.0.0.1")
            if serve:
                hook = f"{__name__}.{serve_replicas_on_loopback.__name__}"
                init_kwargs["runtime_env"] = {**init_kwargs.get("runtime_env", {}), "worker_process_setup_hook": hook}
        elif host in ANY:
            init_kwargs.update(dashboard_host="0.0.0.0")
        else:
            init_kwargs.update(_node_ip_address=host, dashboard_host=host)
        if host not in LOOPBACK:
            print(f"plasticity: warning: the local Ray listens on {host} ({BIND_ENV}): anyone who reaches it reaches "
                  "Ray's metrics endpoints without a login, and its token crosses the network unencrypted",
                  file=sys.stderr)
        # "local": always a new Ray. With no address, ray.init joins the last cluster that
        # `ray start` made on this machine (/tmp/ray/ray_current_cluster), someone else's
        # or a dead one (it then waits a minute for that GCS).
        ray.init(address="local", **init_kwargs)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder / "token"
