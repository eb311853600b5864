"""Benchmark: training throughput and peak memory of the plastic network on the
binary-pattern task at the reference size (N = 1001 neurons, 106 steps per episode).

    python benchmarks/bench_patterns.py                 # full table (a few minutes)
    python benchmarks/bench_patterns.py --batches 1 8   # fewer rows
    python benchmarks/bench_patterns.py --smoke-test    # tiny sizes, seconds (CI)

One row per (path, batch size); each row runs in a fresh subprocess so that its peak
resident memory (ru_maxrss) is its own. A row is one optimiser step over `batch`
episodes: forward, backward through all steps, Adam. Paths:

  naive      the step-by-step one-episode loop (`plasticity.nn.naive`), batch-1 plain
             autograd like the 2018 code; a batch of B is B episodes one after another
             with gradient accumulation
  batched    `PlasticRNN`, all B episodes at once, plain autograd
  recompute  `PlasticRNN` with segment recomputation (`--recompute-every`)

Rows whose plain-autograd memory, extrapolated from batch 1, would not fit in the
memory limit are not run and say so. No assertions: this prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from plasticity.config import preset
from plasticity.models import build_model
from plasticity.nn.naive import plastic_rnn_naive
from plasticity.tasks import PatternTask


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(path: str, batch: int, reps: int, recompute: int, smoke: bool) -> dict:
    """Time `reps` optimiser steps after one warm-up step; report ms/episode and memory."""
    overrides = dict(pattern_size=50, num_patterns=2) if smoke else {}
    cfg = preset("patterns", "reference", recompute_every=recompute if path == "recompute" else 0, **overrides)
    task = PatternTask(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task.n_io)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(0)
    episodes = [task.sample(batch, g) for _ in range(reps + 1)]
    idle = rss_mib()

    def step(ep):
        opt.zero_grad(set_to_none=True)
        if path == "naive":
            p = model.core.plastic
            for b in range(batch):
                out, _ = plastic_rnn_naive(p.w, p.alpha, p.eta, cfg.rule, ep.inputs[b])
                loss = (out[-1, :task.size] - ep.target[b]).pow(2).mean() / batch
                loss.backward()
        else:
            out, _ = model(ep.inputs)
            task.loss(out, ep).backward()
        opt.step()

    step(episodes[0])
    t0 = time.perf_counter()
    for ep in episodes[1:]:
        step(ep)
    seconds = (time.perf_counter() - t0) / reps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "batch": batch, "ms_per_episode": 1000 * seconds / batch,
            "episodes_per_s": batch / seconds, "peak_mib": peak, "idle_mib": idle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--paths", nargs="+", default=["naive", "batched", "recompute"])
    ap.add_argument("--reps", type=int, default=2, help="timed optimiser steps per row (after 1 warm-up)")
    ap.add_argument("--recompute-every", type=int, default=10)
    ap.add_argument("--memory-limit-gib", type=float, default=20.0)
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--one", nargs=2, metavar=("PATH", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.reps, args.recompute_every, args.smoke_test)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'smoke test' if args.smoke_test else 'N = 1001, 106 steps'}")
    header = f"{'path':<10} {'batch':>5} {'episodes/s':>11} {'ms/episode':>11} {'peak RSS MiB':>13} {'over idle':>10}"
    print(header)
    print("-" * len(header))
    batched_1 = None
    for path in args.paths:
        for batch in args.batches:
            if path == "batched" and batched_1 is not None and batch > 1:
                estimate = batched_1["idle_mib"] + (batched_1["peak_mib"] - batched_1["idle_mib"]) * batch
                if estimate > args.memory_limit_gib * 1024:
                    print(f"{path:<10} {batch:>5}   not run: needs ~{estimate / 1024:.0f} GiB "
                          f"(> {args.memory_limit_gib:g} GiB limit)")
                    continue
            cmd = [sys.executable, __file__, "--one", path, str(batch), "--reps", str(args.reps),
                   "--recompute-every", str(args.recompute_every)] + (["--smoke-test"] if args.smoke_test else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{path:<10} {batch:>5}   failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            if path == "batched" and batch == 1:
                batched_1 = row
            print(f"{path:<10} {batch:>5} {row['episodes_per_s']:>11.2f} {row['ms_per_episode']:>11.0f} "
                  f"{row['peak_mib']:>13.0f} {row['peak_mib'] - row['idle_mib']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
