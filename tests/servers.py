"""Real servers for tests: free ports, an `mlflow server` process, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.processes import free_port  # noqa: F401 -- the tests take it from here


def wait_port(port: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def start_mlflow_server(workdir: Path, backend: str, tries: int = 3) -> tuple[subprocess.Popen, str]:
    """An `mlflow server` on a free loopback port, artifacts served from `workdir`; up once
    its /health answers. A port found free can be taken before the server binds it (by a
    Ray or another server of a test beside this one): then the server exits, and it is
    started again on another port. Its output: `workdir/mlflow.log` (the last start's)."""
    import urllib.request

    for _ in range(tries):
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend, "--artifacts-destination", str(workdir / "artifacts"),
             "--workers", "1"],
            stdout=open(workdir / "mlflow.log", "w"), stderr=subprocess.STDOUT, cwd=workdir,
            start_new_session=True)
        deadline = time.time() + 120
        while server.poll() is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return server, f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.5)
        stop(server)
    log = (workdir / "mlflow.log").read_text()[-2000:]
    raise TimeoutError(f"mlflow server did not answer /health in {tries} tries; its log ends:\n{log}")


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


class FileServer:
    """A real HTTP server on 127.0.0.1 serving the files under `root`, with byte-range
    support (206 Partial Content) as download mirrors have. `requests` records
    `(path, Range header)`; `fail_after` cuts the body of the next response short."""

    def __init__(self, root: Path):
        import http.server
        import threading

        self.root, self.requests, self.fail_after = Path(root), [], None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(data) - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:]
                if server.fail_after is not None:
                    body, server.fail_after = body[:server.fail_after], None
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def gcs_call(address: str, token: str | None) -> str:
    """Status of one raw gRPC call (NodeInfoGcsService.GetClusterId) to a Ray GCS at
    `host:port`, sent with `token` as its bearer token (None: no token): "OK" or a gRPC
    status name such as "UNAUTHENTICATED"."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=30,
                              metadata=[("authorization", f"Bearer {token}")] if token else None)
        except grpc.RpcError as e:
            return e.code().name
    return "OK"


def http_status(url: str, token: str | None = None) -> int:
    """HTTP status of a GET of `url`, with `Authorization: Bearer token` when a token is given."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
