"""Edge: live sessions of a network that keeps learning, served by Ray Serve.

    plasticity serve MODEL_URI [--shards 2] [--max-sessions 64] [--idle-timeout 600] [--port 8000]

HTTP API (JSON; with a token, every request needs `Authorization: Bearer TOKEN`):

    GET    /info                     the model and the schedule a client follows
    POST   /sessions                 -> {"id"}            a fresh state (zero activity, zero Hebb)
    POST   /sessions/{id}/step       {"input": [P numbers]} -> {"output": [P], "steps"}  one network step
    POST   /sessions/{id}/steps      {"inputs": [T rows of P]} -> {"outputs": [T rows], "steps"}  T steps, one forward
    POST   /sessions/{id}/reset      back to a zero state
    GET    /sessions/{id}            {"steps", "memory_bytes", "hebb_norm", ...}
    DELETE /sessions/{id}

Layout: a stateless `Gateway` (FastAPI ingress) and `--shards` deployments `Shard0..`,
one replica each, each holding its sessions' state in a `SessionStore`. A session id
starts with its shard's number: the gateway routes every request of a session to the
replica that holds it (route by id; state never moves). Within a shard, concurrent
steps are batched with `@serve.batch` into one plastic forward, and so are concurrent
sequences (those of equal length share a forward over their T steps). A shard that dies loses
its sessions (404 afterwards); the others go on.

May import: ray, fastapi
May import in functions: plasticity.localray
"""


import hashlib
import hmac
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from plasticity.errors import PlasticityError
from plasticity.serving.episode import RequestError
from plasticity.serving.model import ServedModel
from plasticity.serving.sessions import SessionStore

TOKEN_ENV = "PLASTICITY_SERVE_TOKEN"


@dataclass
class ServeSettings:
    shards: int = 1
    max_sessions: int = 64
    """Open sessions at most, over all shards (each shard takes its share)."""
    idle_timeout_s: float = 600.0
    max_batch_size: int = 64
    batch_wait_s: float = 0.002
    threads: int = 0
    """torch threads per shard; 0: torch's default."""
    shard_cpus: float = 1.0
    """CPUs Ray reserves for each shard (the gateway reserves none)."""
    max_sequence: int = 4096
    """Steps one `/steps` request may hold at most."""


def _error(e: RequestError) -> dict:
    return {"error": str(e), "status": e.status}


class ShardImpl:
    """One shard's sessions. Methods return plain dicts: `{"error", "status"}` on failure."""

    def __init__(self, checkpoint: bytes, index: int, settings: ServeSettings, per_shard: int):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "checkpoint.pt"
            path.write_bytes(checkpoint)
            self.served = ServedModel.from_checkpoint(path, threads=settings.threads or None)
        self.served.warm_up()
        self.store = SessionStore(self.served, max_sessions=per_shard, idle_timeout_s=settings.idle_timeout_s,
                                  id_prefix=f"{index}-", max_sequence=settings.max_sequence)
        self.index = index
        for batched in (self.step_batch, self.steps_batch):
            batched.set_max_batch_size(settings.max_batch_size)
            batched.set_batch_wait_timeout_s(settings.batch_wait_s)

    def _call(self, fn, *args) -> dict:
        try:
            return fn(*args)
        except RequestError as e:
            return _error(e)

    async def create(self) -> dict:
        return self._call(lambda: {"id": self.store.create(), "shard": self.index})

    async def info(self, sid: str) -> dict:
        return self._call(lambda: {**self.store.info(sid), "shard": self.index})

    async def reset(self, sid: str) -> dict:
        return self._call(lambda: (self.store.reset(sid), {"reset": True})[1])

    async def delete(self, sid: str) -> dict:
        return self._call(lambda: (self.store.delete(sid), {"deleted": True})[1])

    async def stats(self) -> dict:
        self.store.evict_idle()
        return {"shard": self.index, "sessions": len(self.store), "evicted": self.store.evicted,
                "max_sessions": self.store.max_sessions}

    async def step(self, sid: str, values) -> dict:
        return await self.step_batch((sid, values))

    async def steps(self, sid: str, values) -> dict:
        return await self.steps_batch((sid, values))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def step_batch(self, requests: list[tuple[str, object]]) -> list[dict]:
        return self._answers(requests, self.store.step_many(requests), "output")

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def steps_batch(self, requests: list[tuple[str, object]]) -> list[dict]:
        return self._answers(requests, self.store.steps_many(requests), "outputs")

    def _answers(self, requests: list[tuple[str, object]], results: list, key: str) -> list[dict]:
        """Each request's answer: its output(s), the session's step count after it, the batch size."""
        out = []
        for (sid, _), r in zip(requests, results, strict=True):
            if isinstance(r, RequestError):
                out.append(_error(r))
            else:
                out.append({key: r.tolist(), "steps": self.store.sessions[sid].steps
                            if sid in self.store.sessions else None, "batch": len(requests)})
        return out


def _bad_request(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def gateway_app(info: dict, token_sha256: str | None) -> FastAPI:
    app = FastAPI(title="plasticity live sessions", description=__doc__)

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token_sha256 is not None:
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            digest = hashlib.sha256(token.encode()).hexdigest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, token_sha256):
                return JSONResponse({"error": "missing or wrong token: send the header "
                                              "'Authorization: Bearer TOKEN' with the server's token"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    app.state.info = info
    return app


def _respond(result: dict, status: int = 200) -> JSONResponse:
    if "error" in result:
        headers = {"Retry-After": "5"} if result["status"] == 503 else None
        return JSONResponse({"error": result["error"]}, status_code=result["status"], headers=headers)
    return JSONResponse(result, status_code=status)


def build_app(checkpoint: bytes, settings: ServeSettings, token: str | None = None):
    """The Serve application (gateway + shards) for a checkpoint's bytes. Only the
    token's SHA-256 is handed to Ray, so the token itself never sits in Ray's state."""
    probe = _probe(checkpoint)
    per_shard = -(-settings.max_sessions // settings.shards)
    info = {**probe.layout.describe(), "neurons": probe.n_neurons, "model": probe.cfg.model,
            "rule": probe.cfg.rule, "trained_episodes": probe.episode, "shards": settings.shards,
            "max_sessions": per_shard * settings.shards, "idle_timeout_s": settings.idle_timeout_s,
            "session_memory_bytes": probe.state_bytes(), "max_batch_size": settings.max_batch_size,
            "max_sequence": settings.max_sequence}
    token_sha256 = None if token is None else hashlib.sha256(token.encode()).hexdigest()
    api = gateway_app(info, token_sha256)

    @serve.deployment(name="Gateway", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Gateway:
        def __init__(self, *shards):
            self.shards = list(shards)

        def _shard(self, sid: str):
            head, _, rest = sid.partition("-")
            # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
            if not (head.isascii() and head.isdigit()) or int(head) >= len(self.shards) or not rest:
                raise RequestError("no such session: ids look like '0-<32 characters>' as returned by "
                                   "POST /sessions", status=404)
            return self.shards[int(head)]

        async def _forward(self, sid: str, method: str, *args) -> JSONResponse:
            try:
                shard = self._shard(sid)
            except RequestError as e:
                return _respond(_error(e))
            return _respond(await getattr(shard, method).remote(sid, *args))

        @api.get("/info")
        async def get_info(self) -> JSONResponse:
            stats = [await s.stats.remote() for s in self.shards]
            return JSONResponse({**info, "open_sessions": sum(s["sessions"] for s in stats),
                                 "evicted_sessions": sum(s["evicted"] for s in stats)})

        @api.post("/sessions")
        async def create(self) -> JSONResponse:
            # Start at a random shard and take the first with room.
            start = random.randrange(len(self.shards))
            result = None
            for k in range(len(self.shards)):
                result = await self.shards[(start + k) % len(self.shards)].create.remote()
                if "error" not in result:
                    return _respond(result, 201)
            return _respond(result)

        @api.post("/sessions/{sid}/step")
        async def step(self, sid: str, request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested past the parser's depth
                return _bad_request('the body must be JSON: {"input": [numbers]}')
            if not isinstance(body, dict) or "input" not in body:
                return _bad_request('the body must be {"input": [numbers]} (one item of '
                                    f'{info["item_size"]} values)')
            return await self._forward(sid, "step", body["input"])

        @api.post("/sessions/{sid}/steps")
        async def steps(self, sid: str, request: Request) -> JSONResponse:
            try:
                body = await request.json()
            except (ValueError, RecursionError):
                return _bad_request('the body must be JSON: {"inputs": [[numbers], ...]}')
            if not isinstance(body, dict) or "inputs" not in body:
                return _bad_request('the body must be {"inputs": [[numbers], ...]} (T rows of '
                                    f'{info["item_size"]} values, one row per step)')
            return await self._forward(sid, "steps", body["inputs"])

        @api.post("/sessions/{sid}/reset")
        async def reset(self, sid: str) -> JSONResponse:
            return await self._forward(sid, "reset")

        @api.get("/sessions/{sid}")
        async def get(self, sid: str) -> JSONResponse:
            return await self._forward(sid, "info")

        @api.delete("/sessions/{sid}")
        async def delete(self, sid: str) -> JSONResponse:
            return await self._forward(sid, "delete")

    shard_cls = serve.deployment(ShardImpl, max_ongoing_requests=max(256, 4 * settings.max_batch_size),
                                 ray_actor_options={"num_cpus": settings.shard_cpus})
    shards = [shard_cls.options(name=f"Shard{i}").bind(checkpoint, i, settings, per_shard)
              for i in range(settings.shards)]
    return Gateway.bind(*shards)


def _probe(checkpoint: bytes, label: str | None = None) -> ServedModel:
    """The served model of a checkpoint's bytes; errors name the file as `label` (what the
    user passed) rather than the temporary copy."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "checkpoint.pt"
        path.write_bytes(checkpoint)
        try:
            return ServedModel.from_checkpoint(path)
        except PlasticityError as e:
            if label is None:
                raise
            raise type(e)(str(e).replace(str(path), label)) from None


def read_token(token_file: str | None) -> str | None:
    """The API token from `--token-file` (must be mode 0600 or stricter) or $PLASTICITY_SERVE_TOKEN;
    None for no token. Never from the command line, where `ps` would show it."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise PlasticityError(f"token file {path} not found: write the token into it (chmod 600)")
        if path.stat().st_mode & 0o077:
            raise PlasticityError(f"token file {path} is readable by others (mode {path.stat().st_mode & 0o777:o}): "
                                  f"chmod 600 {path}")
        token = path.read_text().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is not None and len(token) < 16:
        raise PlasticityError("the token is shorter than 16 characters: use a long random one "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def checkpoint_bytes(model_uri: str) -> bytes:
    """The checkpoint behind a model URI (`models:/...`, `runs:/...`) or a checkpoint path."""
    if Path(model_uri).is_file():
        return Path(model_uri).read_bytes()
    if "://" not in model_uri and ":/" not in model_uri:
        raise PlasticityError(f"{model_uri} is neither a checkpoint file nor a model URI: pass "
                              "runs/<run>/checkpoint.pt or models:/plasticity-patterns/1")
    from plasticity.serving.mlflow_pyfunc import checkpoint_of

    try:
        return checkpoint_of(model_uri).read_bytes()
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds; all mean "cannot fetch"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PlasticityError(f"cannot fetch the checkpoint of {model_uri} ({first}): check the URI and "
                              "MLFLOW_TRACKING_URI; only models logged by plasticity carry one") from None


def start(model_uri: str, settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000,
          address: str | None = None, num_cpus: int | None = None, token: str | None = None,
          name: str = "plasticity", route_prefix: str = "/", ray_bind: str | None = None):
    """Join Ray at `address` / $RAY_ADDRESS, or start a private local Ray (on `ray_bind`,
    default $PLASTICITY_BIND or 127.0.0.1, with a fresh Ray token: plasticity/localray.py);
    start Serve on host:port and deploy the app; returns its handle."""
    import ray

    from plasticity.localray import start_local_ray

    checkpoint = checkpoint_bytes(model_uri)
    _probe(checkpoint, model_uri)  # a checkpoint that cannot be served is refused before Ray starts
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            start_local_ray(ray_bind, serve=True, num_cpus=num_cpus, include_dashboard=False,
                            log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(checkpoint, settings, token), name=name, route_prefix=route_prefix)
