"""Real servers for tests: free ports, an `mlflow server` process, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def start_mlflow_server(workdir: Path, backend: str) -> tuple[subprocess.Popen, str]:
    """An `mlflow server` on a free loopback port, artifacts served from `workdir`."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend, "--artifacts-destination", str(workdir / "artifacts"),
         "--workers", "1"],
        stdout=open(workdir / "mlflow.log", "w"), stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    wait_port(port)
    return server, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, with its children."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
