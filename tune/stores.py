"""Where a sweep keeps its state and the servers it talks to: the defaults of the Optuna
storage and of Ray's results folder (written here once; `plasticity sweep` and `sweep show`
read them), checks that fail in one line before anything runs (the Optuna storage, a Ray
address, the GPUs a trial asks for), and joining Ray or starting a private local one."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from plasticity.errors import ConfigError
from plasticity.redact import redact


def fail(message: str) -> None:
    """The sweep commands' one error line (passwords masked), exit code 2."""
    print(f"plasticity sweep: error: {redact(message)}", file=sys.stderr)
    raise SystemExit(2)


def default_storage(url: str | None) -> str:
    """The Optuna storage: `url`, else $OPTUNA_STORAGE (on a cluster the nodes' environment
    names the shared one, docker-compose.yml), else `optuna.db` in the working folder."""
    return url or os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{Path.cwd() / 'optuna.db'}"


def default_storage_path(path: str | None) -> str:
    """Ray's results folder: `path`, else $PLASTICITY_STORAGE_PATH, else `ray_results`; a
    local folder as an absolute path (Ray's workers run elsewhere), a URL as it is."""
    path = path or os.environ.get("PLASTICITY_STORAGE_PATH") or "ray_results"
    return path if "://" in path else str(Path(path).resolve())


def check_optuna_storage(url: str):
    """Optuna's storage at `url`, or a one-line `ConfigError` naming the fix. A PostgreSQL
    URL is probed first with a short timeout (SQLAlchemy retries a dead server for long)."""
    import optuna

    from plasticity.tracking.database import postgres_problem

    problem = postgres_problem(url)
    if problem:
        raise ConfigError(f"{problem}: fix the server or --storage / OPTUNA_STORAGE, or pass --storage "
                          "sqlite:///optuna.db")
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 - any failure means the URL is unusable
        first = (redact(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"cannot open Optuna storage {redact(url)} ({first}): pass --storage sqlite:///optuna.db "
                          "or a reachable postgresql://user@host/db") from None


def load_study(name: str, storage):
    """The sweep's Optuna study, or None where it cannot be read (the figures drawn from it
    are then left out: the sweep's answer does not depend on them)."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except Exception:  # noqa: BLE001 - no study (e.g. no trial ever ran), or the storage is gone
        return None


def probe_ray(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a `host:port` or `ray://host:port` that nothing answers on: `ray.init`
    itself keeps retrying for many minutes."""
    target = address.removeprefix("ray://")
    if target in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot connect to Ray at {address} ({type(e).__name__}: {e}): start the cluster "
                          "(`ray start --head`) or fix --address / RAY_ADDRESS") from None


def connect_ray(address: str | None):
    """Join the cluster at `address` / $RAY_ADDRESS, or start a private local Ray: on
    127.0.0.1 with a fresh token (plasticity/localray.py; $PLASTICITY_BIND opens it)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        from plasticity.localray import start_local_ray

        try:
            start_local_ray(include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"cannot start a local Ray ({first}): check $PLASTICITY_BIND, or pass --address "
                              "to use a running cluster") from None
        return
    probe_ray(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"cannot connect to Ray at {address} ({first}): start "
                          "the cluster (`ray start --head`) or fix --address / RAY_ADDRESS") from None


def check_gpus(per_trial: float) -> None:
    """Trials asking for more GPU than the cluster has would wait forever: say so instead."""
    import ray

    have = ray.cluster_resources().get("GPU", 0.0)
    if per_trial > have:
        raise ConfigError(f"--gpus-per-trial {per_trial:g} but the Ray cluster has {have:g} GPUs: pass "
                          "--gpus-per-trial 0, or start Ray on GPU nodes (`ray start --num-gpus N`)")
