"""`plasticity serve MODEL_URI`: live sessions of a trained network over HTTP (Ray Serve).

    plasticity serve models:/plasticity-patterns/1
    plasticity serve runs/<run>/checkpoint.pt --shards 2 --max-sessions 128 --port 8000
    PLASTICITY_SERVE_TOKEN=... plasticity serve ...        # or --token-file FILE (mode 600)

Runs until interrupted (Ctrl-C), then shuts the application down. The API is described
in `plasticity/serving/ray_app.py` and the README ("Serve a trained network").

May import: plasticity.cliargs, tyro
May import in functions: ray
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Annotated

import tyro

from plasticity.cliargs import parse_args
from plasticity.errors import ConfigError, check_positive
from plasticity.plugins import export as export_plugins


@dataclass
class ServeArgs:
    """Serve live sessions of a trained network: each session keeps its own Hebbian memory
    and keeps learning with every step."""

    model: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="MODEL_URI")]
    """`models:/NAME/VERSION`, `runs:/RUN/model` (a model logged by plasticity) or a checkpoint.pt."""
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 (this machine only) unless you mean to expose it."""
    port: int = 8000
    """HTTP port."""
    address: str | None = None
    """Ray cluster to join (e.g. `auto` or `ray://head:10001`); default: start a local Ray."""
    num_cpus: int | None = None
    """CPUs of the local Ray (default: all)."""
    ray_bind: str | None = None
    """Address the local Ray's own servers listen on (GCS, raylet, agents, workers; token
    authentication always on): default $PLASTICITY_BIND, else 127.0.0.1 (this machine only);
    0.0.0.0 or an address opens it to the network. Not used with --address."""
    shards: int = 1
    """Deployments holding sessions (one replica each); a session stays on its shard."""
    max_sessions: int = 64
    """Open sessions at most (all shards); past it POST /sessions answers 503. The plastic
    network's state is (N + N^2) x 4 bytes per session: 4 MB at N = 1001."""
    idle_timeout: float = 600.0
    """Seconds after which a session nobody used is deleted."""
    max_batch_size: int = 64
    """Steps of concurrent sessions run as one forward, up to this many (1 = unbatched)."""
    batch_wait_ms: float = 2.0
    """How long a step waits for others to join its batch."""
    max_sequence: int = 4096
    """Steps one `POST /sessions/ID/steps` request may hold at most."""
    threads: int = 0
    """torch threads per shard (0: torch's default)."""
    shard_cpus: float = 1.0
    """CPUs Ray reserves for each shard (the gateway reserves none)."""
    token_file: str | None = None
    """File holding the API token (chmod 600); else $PLASTICITY_SERVE_TOKEN; else no token."""


def check_serve_args(args: ServeArgs) -> None:
    """Every number in range before Ray starts: one `ConfigError` naming the flag."""
    for name in ("idle_timeout", "batch_wait_ms", "shard_cpus"):
        if not math.isfinite(getattr(args, name)):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(args, name)}: "
                              "pass a number such as its default")
    for name in ("port", "shards", "max_sessions", "idle_timeout", "max_batch_size", "max_sequence"):
        check_positive(name.replace("_", "-"), getattr(args, name))
    for name in ("batch_wait_ms", "threads", "shard_cpus"):
        check_positive(name.replace("_", "-"), getattr(args, name), allow_zero=True)
    if args.num_cpus is not None:
        check_positive("num-cpus", args.num_cpus)
    if args.port > 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port: pass one in 1..65535 (e.g. 8000)")
    if args.max_sessions < args.shards:
        raise ConfigError(f"--max-sessions {args.max_sessions} is less than --shards {args.shards}: "
                          "every shard needs room for a session")


def main(argv: list[str]) -> int:
    args = parse_args(ServeArgs, argv, prog="plasticity serve")
    check_serve_args(args)
    try:
        from plasticity.serving import ray_app
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("ray", "fastapi", "starlette", "grpc_reflection"):
            raise
        print(f"plasticity: error: serving needs Ray Serve ({e.name} is missing): "
              "pip install 'plasticity[serve]'", file=sys.stderr)
        return 2
    token = ray_app.read_token(args.token_file)
    # The replicas (Ray workers of the local Ray started below) load the same plugins.
    export_plugins()
    settings = ray_app.ServeSettings(shards=args.shards, max_sessions=args.max_sessions,
                                     idle_timeout_s=args.idle_timeout, max_batch_size=args.max_batch_size,
                                     batch_wait_s=args.batch_wait_ms / 1000, threads=args.threads,
                                     shard_cpus=args.shard_cpus, max_sequence=args.max_sequence)
    ray_app.start(args.model, settings, host=args.host, port=args.port, address=args.address,
                  num_cpus=args.num_cpus, token=token, ray_bind=args.ray_bind)
    print(f"serving {args.model} on http://{args.host}:{args.port} ({args.shards} shard(s), "
          f"{'token required' if token else 'no token'}); Ctrl-C to stop", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # A timed wait, so the signal handler gets to run promptly.
    while not stop.wait(0.5):
        pass
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    return 0
