"""A client of a served plastic network: memorise patterns, then complete a degraded one.

Live session (`plasticity serve MODEL`): opens a session, shows each pattern step by step
(the schedule comes from GET /info), then the degraded pattern, and prints the bit error
of the completion. The network learns the patterns during the session, in its Hebbian
traces: nothing was trained on them.

    python examples/serve_client.py --url http://127.0.0.1:8000
    python examples/serve_client.py --mlflow http://127.0.0.1:5001   # `mlflow models serve`: one request

Needs numpy only (HTTP through urllib). With a token: PLASTICITY_SERVE_TOKEN=... in the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np


def call(method: str, url: str, body=None, token: str | None = None) -> dict:
    """One JSON request; raises RuntimeError with the server's message on an HTTP error."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {url}: HTTP {e.code}: {e.read().decode()[:300]}") from None


def make_episode(num_items: int, size: int, seed: int, erase: float = 0.5):
    """`num_items` random +-1 patterns (half the bits +1), one of them with `erase` of
    its bits set to 0. Returns (patterns [K, P], query [P], target [P], erased [P])."""
    g = np.random.default_rng(seed)
    patterns = np.stack([np.where(g.permutation(size) < size // 2, 1.0, -1.0) for _ in range(num_items)])
    target = patterns[g.integers(num_items)]
    erased = g.permutation(size) < round(erase * size)
    return patterns, np.where(erased, 0.0, target), target, erased


def bit_error(output, target, erased) -> float:
    return float((np.sign(output) != target)[erased].mean())


def run_session(url: str, seed: int = 0, token: str | None = None, verbose: bool = True) -> dict:
    """One episode through a live session; returns the outputs of every step and the bit error."""
    info = call("GET", f"{url}/info", token=token)
    k, p = info["num_items"], info["item_size"]
    patterns, query, target, erased = make_episode(k, p, seed)
    sid = call("POST", f"{url}/sessions", token=token)["id"]
    steps, outputs = [], []
    for _ in range(info["num_cycles"]):
        for pattern in patterns:
            steps += [pattern] * info["present_steps"] + [np.zeros(p)] * info["gap_steps"]
    steps += [query] * info["test_steps"]
    for x in steps:
        outputs.append(call("POST", f"{url}/sessions/{sid}/step", {"input": x.tolist()}, token)["output"])
    state = call("GET", f"{url}/sessions/{sid}", token=token)
    call("DELETE", f"{url}/sessions/{sid}", token=token)
    err = bit_error(outputs[-1], target, erased)
    if verbose:
        print(f"session {sid[:6]}...: showed {k} patterns of {p} bits ({len(steps) - info['test_steps']} steps), "
              f"then one with {int(erased.sum())} bits erased for {info['test_steps']} steps")
        print(f"memory after the episode: |Hebb| = {state.get('hebb_norm', float('nan')):.3f}, "
              f"{state['memory_bytes']} bytes")
        print(f"bit error of the completion on the erased bits: {err:.3f} (chance 0.5)")
    return {"bit_error": err, "outputs": np.array(outputs), "steps": np.array(steps), "session": state}


def run_episode_request(url: str, num_items: int, size: int, seed: int = 0, verbose: bool = True) -> dict:
    """The same episode as one request to `mlflow models serve` (Hebb starts at zero)."""
    patterns, query, target, erased = make_episode(num_items, size, seed)
    episode = np.concatenate([patterns, query[None]])[None]
    out = call("POST", f"{url}/invocations", {"inputs": episode.tolist()})["predictions"]
    err = bit_error(out[0], target, erased)
    if verbose:
        print(f"one request of {num_items} patterns + the degraded one: bit error {err:.3f} (chance 0.5)")
    return {"bit_error": err, "output": np.array(out[0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a `plasticity serve` app, e.g. http://127.0.0.1:8000")
    where.add_argument("--mlflow", help="an `mlflow models serve` server, e.g. http://127.0.0.1:5001")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random patterns")
    parser.add_argument("--patterns", type=int, default=5, help="patterns per episode (--mlflow only)")
    parser.add_argument("--size", type=int, default=1000, help="bits per pattern (--mlflow only)")
    args = parser.parse_args(argv)
    try:
        if args.url:
            run_session(args.url.rstrip("/"), args.seed, os.environ.get("PLASTICITY_SERVE_TOKEN"))
        else:
            run_episode_request(args.mlflow.rstrip("/"), args.patterns, args.size, args.seed)
    except (RuntimeError, OSError) as e:
        print(f"serve_client: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
