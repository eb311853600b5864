"""Speed of live sessions: steps/s and request latency (p50/p99) with 1, 16 and 64
concurrent sessions, at the small (N = 51) and reference (N = 1001) pattern sizes, batched
(`@serve.batch`, up to 64 requests per forward) against unbatched (one request per
forward), with requests of one step (`POST /step`) and of 16 (`POST /steps`, one forward
over the sequence; `--sequences`).

Three layers are measured in one run:
  in-process  `SessionStore.step_many` with all sessions (batched) or one call per
              session (unbatched): the forward pass and the state copies only;
  http        a real `plasticity serve` app on 127.0.0.1 (Ray Serve, one shard), driven by
              one asyncio client per session, each sending its next step when the last
              answered: HTTP, the proxy, the gateway, the handle call and the batch queue;
  handle      the same load through a Serve handle straight to the shard: the handle call,
              the batch queue and the shard (no HTTP client, proxy or gateway).

The weights are untrained (speed does not depend on them). Prints a Markdown table.

    flock /tmp/plasticity-bench.lock python benchmarks/bench_serve.py [--seconds 4] [--smoke-test]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cluster.processes import free_port
from plasticity.config import preset
from plasticity.models import build_model
from plasticity.serving import ServedModel, SessionStore
from plasticity.serving.episode import EpisodeLayout
from plasticity.train.checkpoint import save_checkpoint

SIZES = {"small": dict(pattern_size=50, num_patterns=2), "reference": dict(pattern_size=1000, num_patterns=5)}


def make_checkpoint(size: str, folder: Path) -> Path:
    cfg = preset("patterns", "small" if size == "small" else "reference", **SIZES[size])
    torch.manual_seed(0)
    model = build_model(cfg, EpisodeLayout.from_config(cfg).n_io)
    return save_checkpoint(folder / f"{size}.pt", model=model, config=cfg.to_dict(), episode=0)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def bench_in_process(served: ServedModel, sessions: int, seconds: float, batched: bool, seq: int = 1) -> dict:
    """Requests of `seq` steps each (1: `step`, more: `steps`, one forward over them)."""
    store = SessionStore(served, max_sessions=sessions)
    ids = [store.create() for _ in range(sessions)]
    rng = np.random.default_rng(0)
    x = np.where(rng.random((sessions, seq, served.layout.item_size)) < 0.5, -1.0, 1.0).astype(np.float32)
    x = x[:, 0] if seq == 1 else x
    many, one = (store.step_many, store.step) if seq == 1 else (store.steps_many, store.steps)
    lat, steps = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        if batched:
            many(list(zip(ids, x, strict=True)))
            lat += [time.perf_counter() - t0] * sessions
        else:
            for sid, xi in zip(ids, x, strict=True):
                t1 = time.perf_counter()
                one(sid, xi)
                lat.append(time.perf_counter() - t1)
        steps += sessions * seq
    wall = time.perf_counter() - start
    # Sessions per forward: a batch is split into forwards of at most store.max_forward.
    return {"steps_s": steps / wall, "p50_ms": 1e3 * percentile(lat, 50), "p99_ms": 1e3 * percentile(lat, 99),
            "mean_batch": min(sessions, store.max_forward) if batched else 1}


def _rows(item_size: int, seq: int) -> np.ndarray:
    return np.where(np.random.default_rng(0).random((seq, item_size)) < 0.5, -1.0, 1.0)


async def _load(send, ids: list[str], seconds: float, seq: int) -> dict:
    """Each session sends its next request when the last answered (`send(sid)` -> the
    answer), for `seconds`: steps/s, request latency and the batch each answer reports."""
    lat: list[float] = []
    batches: list[int] = []
    stop_at = time.perf_counter() + seconds

    async def one(sid: str):
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            answer = await send(sid)
            lat.append(time.perf_counter() - t0)
            batches.append(answer["batch"])

    start = time.perf_counter()
    await asyncio.gather(*(one(sid) for sid in ids))
    wall = time.perf_counter() - start
    return {"steps_s": seq * len(lat) / wall, "p50_ms": 1e3 * percentile(lat, 50),
            "p99_ms": 1e3 * percentile(lat, 99), "mean_batch": statistics.fmean(batches) if batches else float("nan")}


async def _drive(url: str, sessions: int, seconds: float, item_size: int, seq: int = 1) -> dict:
    """The load over HTTP: client, Serve proxy, gateway, handle call, batch queue, shard."""
    import aiohttp

    rows = _rows(item_size, seq)
    route, body = ("step", {"input": rows[0].tolist()}) if seq == 1 else ("steps", {"inputs": rows.tolist()})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        ids = []
        for _ in range(sessions):
            async with http.post(f"{url}/sessions") as r:
                ids.append((await r.json())["id"])

        async def send(sid: str) -> dict:
            async with http.post(f"{url}/sessions/{sid}/{route}", json=body) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{route} failed: {r.status} {answer}")
                return answer

        result = await _load(send, ids, seconds, seq)
        for sid in ids:
            async with http.delete(f"{url}/sessions/{sid}"):
                pass
    return result


async def _drive_handle(app: str, sessions: int, seconds: float, item_size: int, seq: int = 1) -> dict:
    """The same load as `_drive`, sent through a Serve handle straight to the app's shard:
    no HTTP client, proxy or gateway (what those cost is the difference to the http rows)."""
    from ray import serve

    shard = serve.get_deployment_handle("Shard0", app_name=app)
    rows = _rows(item_size, seq)
    method, arg = ("step", rows[0].tolist()) if seq == 1 else ("steps", rows.tolist())
    ids = [(await shard.create.remote())["id"] for _ in range(sessions)]

    async def send(sid: str) -> dict:
        answer = await getattr(shard, method).remote(sid, arg)
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer}")
        return answer

    result = await _load(send, ids, seconds, seq)
    for sid in ids:
        await shard.delete.remote(sid)
    return result


def start_apps(checkpoints: dict[str, Path], port: int, max_sessions: int) -> dict[tuple[str, bool], str]:
    """One Serve instance, an app per (size, batched), each under its own route prefix."""
    from ray import serve

    from plasticity.localray import start_local_ray
    from plasticity.serving.ray_app import ServeSettings, build_app

    # A private Ray on 127.0.0.1 with its own token, as `plasticity serve` starts.
    start_local_ray(serve=True, num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    urls = {}
    for size, path in checkpoints.items():
        for batched in (True, False):
            name = f"{size}-{'batched' if batched else 'unbatched'}"
            settings = ServeSettings(shards=1, max_sessions=max_sessions, max_batch_size=64 if batched else 1,
                                     shard_cpus=0, threads=1)
            serve.run(build_app(path.read_bytes(), settings), name=name, route_prefix=f"/{name}")
            urls[(size, batched)] = f"http://127.0.0.1:{port}/{name}"
    return urls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per cell")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 16],
                        help="steps per request: 1 = POST /step, T > 1 = POST /steps of T steps (one forward)")
    parser.add_argument("--no-http", action="store_true", help="in-process numbers only")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run: small size, 1 and 4 sessions, 0.5 s")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seconds, args.sessions, args.sizes, args.sequences = 0.5, [1, 4], ["small"], [1, 4]
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    checkpoints = {size: make_checkpoint(size, folder) for size in args.sizes}
    rows = []
    for size, path in checkpoints.items():
        served = ServedModel.from_checkpoint(path)
        served.warm_up()
        for seq in args.sequences:
            for n in args.sessions:
                for batched in (True, False):
                    r = bench_in_process(served, n, args.seconds, batched, seq)
                    rows.append(("in-process", size, served.n_neurons, n, seq, batched, r))
                    print(f"in-process {size} sessions={n} steps/request={seq} batched={batched}: {r}",
                          file=sys.stderr, flush=True)
    if not args.no_http:
        urls = start_apps(checkpoints, free_port(), max(args.sessions))
        for (size, batched), url in urls.items():
            n_neurons = ServedModel.from_checkpoint(checkpoints[size]).n_neurons
            item = SIZES[size]["pattern_size"]
            for seq in args.sequences:
                for n in args.sessions:
                    for layer in ("http", "handle"):
                        r = asyncio.run(_drive(url, n, args.seconds, item, seq) if layer == "http" else
                                        _drive_handle(url.rsplit("/", 1)[1], n, args.seconds, item, seq))
                        rows.append((layer, size, n_neurons, n, seq, batched, r))
                        print(f"{layer} {size} sessions={n} steps/request={seq} batched={batched}: {r}",
                              file=sys.stderr, flush=True)
        from ray import serve

        serve.shutdown()
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"{args.seconds:g} s per cell\n")
    print("| layer | size | N | sessions | steps/request | batched | steps/s | p50 ms/request | p99 ms/request | "
          "requests per forward |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for layer, size, n_neurons, n, seq, batched, r in rows:
        print(f"| {layer} | {size} | {n_neurons} | {n} | {seq} | {'yes' if batched else 'no'} | {r['steps_s']:.0f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_batch']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
