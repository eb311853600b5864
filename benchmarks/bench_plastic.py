"""Benchmark: training throughput and peak memory of the plastic recurrent network,
against the memory-traffic floor of this machine.

    python benchmarks/bench_plastic.py                        # the full table (about 15 min on 2 cores)
    python benchmarks/bench_plastic.py --sizes patterns --batches 1 8
    python benchmarks/bench_plastic.py --device cuda          # the same table on a GPU
    python benchmarks/bench_plastic.py --smoke-test           # tiny sizes, seconds (CI)

Sizes: `patterns` = the reference pattern task (N = 1001 neurons, 106 steps per
episode, its own episodes, input added); `images` = the reference image task (N = 1025,
201 steps, input clamped; random pixel values: the timing does not depend on them). One row per
(size, path, batch); each row runs in a fresh subprocess so that its peak memory is its
own. A row is one optimiser step over `batch` episodes: forward, backward through all
steps, Adam. Paths:

  naive    the step-by-step one-episode loop (`plasticity.nn.naive`), plain autograd,
           like the 2018 code; a batch of B is B episodes one after another
  autograd `PlasticRNN(impl="autograd")`: all B episodes at once, step-by-step autograd
  fused    `PlasticRNN(impl="fused")` (the default): one pass over Hebb per step and a
           backward pass that rebuilds Hebb by inverting the rule (`plasticity/nn/fused/`),
           in one of two schedules (`--schedules`, one row each):
             batch    all B episodes take each step together (B x N^2 of Hebb per step
                      streams through memory)
             chunked  chunks of episodes whose Hebb fits half the last-level cache, each
                      run through all its steps (forward, then backward) before the next
                      (`--chunk` sets the episodes per chunk; the library's default on
                      CPU, `chunk_episodes="auto"`)
  fused-torch  the fused path with its torch-op kernels (the CUDA path before Triton)
  fused-bf16   the fused path with the network and Hebb stored in bfloat16 (Triton on CUDA
           computes in float32; the floor counts 2-byte tensors)
  The `kernels` column names the fused path's kernels (`auto`: C++ on CPU, Triton on CUDA).

The floor: the fused algorithm must move, per step, its `[B, N, N]` float32 tensors 6 times
(forward: read H_t, write H_t+1; backward: read H_t and dL/dH, write H_t-1 and dL/dH) and
the `[N, N]` parameters 6 times (alpha read forward and backward; dalpha and deta read and
written); a two-trace rule (`retroactive`: Hebb and E) moves each of its two traces and
their gradients so, 12 times (the recomputation of the states it does not keep is not
counted: the floor is the traffic any fused algorithm needs). Floor episodes/s = B / (T x
those bytes / bandwidth), the bandwidth being this machine's measured copy rate (read +
write of a tensor far larger than the caches), measured in each row's process right after
its timing (on a shared machine it drifts from minute to minute). `% floor` = measured /
floor episodes/s: 100% would be a step bound by memory traffic alone; above 100% means the
tensors stayed in cache. `% rmw` is the same ratio with the in-place read-modify-write rate,
the stricter bound for kernels that update their tensors in place (as these do): copying
pays for each write's line being read first, an in-place update does not.

Peak memory is the process's own (CPU: resident-set high-water mark; CUDA: peak
allocated), so it includes torch itself (`over idle` subtracts what the process held
before the first step).

Rows whose plain-autograd memory, extrapolated from batch 1, would not fit under
--memory-limit-gib are not run and say so. No assertions: this prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from plasticity.nn import PlasticRNN
from plasticity.nn.fused import chosen_backend, chunk_episodes_for
from plasticity.nn.naive import modulated_rnn_naive, plastic_rnn_naive
from plasticity.rules import RULES
from plasticity.rules.neuromod import DEFAULT_CLIP


@dataclass(frozen=True)
class Size:
    n: int
    steps: int
    input_mode: str


SIZES = {"patterns": Size(1001, 106, "add"), "images": Size(1025, 201, "clamp")}
SMOKE = {"patterns": Size(51, 106, "add"), "images": Size(65, 13, "clamp")}
PATHS = ("naive", "autograd", "fused", "fused-torch", "fused-bf16")
SCHEDULES = ("batch", "chunked")


def bandwidths(device: torch.device, mib: int = 512, reps: int = 11) -> tuple[float, float]:
    """(copy, in-place) bytes per second, each the median of `reps` timed passes over a
    tensor far larger than the caches, counting each byte read once and written once:
    `dst.copy_(src)` (STREAM's copy; on CPU the write first reads its line, so memory
    sees 3 transfers) and `x.mul_(1)` (a read-modify-write of the same lines, the access
    pattern of the fused kernels)."""
    src = torch.ones(mib * 2**18, device=device)
    dst = torch.empty_like(src)

    def rate(op) -> float:
        op()
        times = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            op()
            sync(device)
            times.append(time.perf_counter() - t0)
        return 2 * src.numel() * 4 / statistics.median(times)

    return rate(lambda: dst.copy_(src)), rate(lambda: src.mul_(1.0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_bytes_per_step(n: int, batch: int, itemsize: int = 4, traces: int = 1) -> int:
    return (6 * traces * batch * n * n + 6 * n * n) * itemsize


def peak_mib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations, else the resident set's high-water
    mark of this program image (VmHWM; ru_maxrss would carry the parent's over exec)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def current_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def episode(size: Size, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, target) of a batch. `patterns`: the pattern task's own episodes (the
    values matter on a CPU: saturated tanh units make tiny gradients, and denormal
    floats are slow). `images`: pixel values in [-1, 1] clamped on half the neurons,
    zero on the rest (the timing does not depend on the pictures)."""
    if size.input_mode == "add":
        from plasticity.config import preset
        from plasticity.tasks import PatternTask

        bits = size.n - 1
        cfg = preset("patterns", "reference", pattern_size=bits)
        task = PatternTask(cfg)
        assert task.steps == size.steps, (task.steps, size.steps)
        ep = task.sample(batch, g)
        return ep.inputs, torch.nn.functional.pad(ep.target, (0, 1))
    x = torch.randn(batch, size.steps, size.n, generator=g)
    inputs = x.clamp(-1, 1) * (torch.rand(batch, size.steps, size.n, generator=g) < 0.5)
    return inputs, torch.randn(batch, size.n, generator=g).clamp(-1, 1)


def run_one(size_name: str, path: str, batch: int, reps: int, smoke: bool, device_name: str,
            schedule: str = "chunked", chunk: int | None = None, rule: str = "hebb",
            modulation: str = "neuron") -> dict:
    """Time `reps` optimiser steps after one warm-up step; report episodes/s and memory.
    A neuromodulated `rule` runs with M(t) per `modulation` and Backpropamine's clip."""
    size = (SMOKE if smoke else SIZES)[size_name]
    device = torch.device(device_name)
    torch.manual_seed(0)
    chunk = 0 if schedule == "batch" else ("auto" if chunk is None else chunk)
    dtype = torch.bfloat16 if path == "fused-bf16" else torch.float32
    modulated = RULES[rule].modulated
    traces = len(RULES[rule].traces)
    net = PlasticRNN(size.n, input_mode=size.input_mode, impl="autograd" if path in ("naive", "autograd") else "fused",
                     fused_backend="torch" if path == "fused-torch" else "auto", chunk_episodes=chunk, rule=rule,
                     modulation=modulation if modulated else "none",
                     clip=DEFAULT_CLIP if modulated else None).to(device, dtype)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    episodes = [episode(size, batch, g) for _ in range(reps + 1)]
    batches = [x.to(device, dtype) for x, _ in episodes]
    targets = [y.to(device, dtype) for _, y in episodes]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    idle = current_mib(device)

    def step(x, target):
        opt.zero_grad(set_to_none=True)
        if path == "naive":
            p = net.plastic
            for b in range(batch):
                if modulated:
                    m = net.modulator
                    out, _ = modulated_rnn_naive(p.w, p.alpha, p.eta, rule, x[b], m.weight.T, m.bias,
                                                 input_mode=size.input_mode, clip=p.clip)
                else:
                    out, _ = plastic_rnn_naive(p.w, p.alpha, p.eta, rule, x[b], input_mode=size.input_mode)
                ((out[-1] - target[b]).pow(2).mean() / batch).backward()
        else:
            out, _ = net(x)
            (out[:, -1] - target).pow(2).mean().backward()
        opt.step()

    step(batches[0], targets[0])  # warm-up (and, first time on a machine, the C++ build)
    sync(device)
    t0 = time.perf_counter()
    for x, target in zip(batches[1:], targets[1:], strict=True):
        step(x, target)
    sync(device)
    seconds = (time.perf_counter() - t0) / reps
    if not path.startswith("fused"):
        label = "-"
    elif schedule == "batch" or (device.type != "cpu" and chunk == "auto"):
        label = "batch"  # the chunked schedule is for CPU caches: elsewhere it is the batch one
    else:
        label = f"chunked/{chunk_episodes_for(batch, size.n, 4, False, chunk, traces=traces)}"  # episodes per chunk
    row = {"size": size_name, "path": path, "schedule": label, "batch": batch, "episodes_per_s": batch / seconds,
           "peak_mib": peak_mib(device), "idle_mib": idle,
           "kernels": (chosen_backend() or "?") if path.startswith("fused") else "autograd"}
    # Right after the timing, in the same process: this machine's bandwidth drifts (it
    # is shared), so each row is compared with what memory delivered at the time.
    del batches, targets, episodes
    copy, rmw = bandwidths(device, 64 if smoke else 512)
    floor = batch * copy / (size.steps * floor_bytes_per_step(size.n, batch, dtype.itemsize, traces))
    row.update(copy_gbs=copy / 1e9, rmw_gbs=rmw / 1e9, floor_episodes_per_s=floor,
               rmw_floor_episodes_per_s=floor * rmw / copy)
    return row


def fmt_row(size: str, path: str, schedule: str, batch: int, rest: str, kernels: str = "") -> str:
    return f"{size:<9} {path:<11} {kernels:<8} {schedule:<10} {batch:>5} {rest}"


def runs(args) -> list[tuple[str, int, str]]:
    """(path, batch, schedule) of each row: the fused rows once per schedule, side by side."""
    rows = []
    for path in args.paths:
        for batch in (args.naive_batches if path == "naive" else args.batches):
            for schedule in (args.schedules if path.startswith("fused") else ["-"]):
                rows.append((path, batch, schedule))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES),
                    help="schedules of the fused path, one row each")
    ap.add_argument("--chunk", type=int, help="episodes per chunk of the chunked schedule (default: from the cache)")
    ap.add_argument("--naive-batches", type=int, nargs="+", default=[1],
                    help="batches run on the naive path (it runs episodes one after another)")
    ap.add_argument("--rule", default="hebb", choices=list(RULES),
                    help="plasticity rule (neuromod: M(t) per --modulation, Hebb clipped to [-1, 1])")
    ap.add_argument("--modulation", default="neuron", choices=["network", "neuron"],
                    help="one M(t) per episode (network) or per neuron, for a neuromodulated --rule")
    ap.add_argument("--reps", type=int, default=2, help="timed optimiser steps per row (after 1 warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-limit-gib", type=float, default=20.0)
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--json", help="also write the rows to this file (one JSON object per line, as they come)")
    ap.add_argument("--one", nargs=4, metavar=("SIZE", "PATH", "SCHEDULE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.chunk is not None and args.chunk < 1:
        sys.exit(f"--chunk must be >= 1 episode, got {args.chunk}")
    if args.one:
        row = run_one(args.one[0], args.one[1], int(args.one[3]), args.reps, args.smoke_test, args.device,
                      args.one[2], args.chunk, args.rule, args.modulation)
        print(json.dumps(row))
        return

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rule = args.rule + (f" (modulation {args.modulation}, clip {DEFAULT_CLIP:g})" if RULES[args.rule].modulated else "")
    print(f"torch {torch.__version__}, {name}; rule {rule}; bandwidths measured in each row's process right after "
          "its timing")
    header = fmt_row("size", "path", "schedule", "batch", f"{'episodes/s':>11} {'copy GB/s':>10} {'floor ep/s':>11} "
                                              f"{'% floor':>8} {'rmw GB/s':>9} {'% rmw':>6} {'peak MiB':>9} "
                                              f"{'over idle':>10}", kernels="kernels")
    print(header)
    print("-" * len(header))
    rows, failed = [], 0
    if args.json:
        open(args.json, "w").close()
    for size_name in args.sizes:
        plain_1 = None
        for path, batch, schedule in runs(args):
            if path == "autograd" and plain_1 is not None and batch > 1:
                need = plain_1["idle_mib"] + (plain_1["peak_mib"] - plain_1["idle_mib"]) * batch
                if need > args.memory_limit_gib * 1024:
                    print(fmt_row(size_name, path, "-", batch, f"not run: needs ~{need / 1024:.0f} GiB "
                                                               f"(> {args.memory_limit_gib:g} GiB limit)"))
                    continue
            cmd = [sys.executable, __file__, "--one", size_name, path, schedule, str(batch), "--reps",
                   str(args.reps), "--device", args.device, "--rule", args.rule, "--modulation", args.modulation] \
                + (["--smoke-test"] if args.smoke_test else []) \
                + ([] if args.chunk is None else ["--chunk", str(args.chunk)])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(fmt_row(size_name, path, schedule, batch,
                              f"failed: {proc.stderr.strip().splitlines()[-1:]}"))
                failed += 1
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["device"] = name
            rows.append(row)
            if args.json:  # row by row: a run stopped part-way keeps its rows
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if path == "autograd" and batch == 1:
                plain_1 = row
            eps = row["episodes_per_s"]
            print(fmt_row(size_name, path, row["schedule"], batch,
                          f"{eps:>11.2f} {row['copy_gbs']:>10.1f} {row['floor_episodes_per_s']:>11.2f} "
                          f"{100 * eps / row['floor_episodes_per_s']:>7.0f}% {row['rmw_gbs']:>9.1f} "
                          f"{100 * eps / row['rmw_floor_episodes_per_s']:>5.0f}% {row['peak_mib']:>9.0f} "
                          f"{row['peak_mib'] - row['idle_mib']:>10.0f}", row["kernels"]), flush=True)
    if failed:
        sys.exit(f"{failed} row(s) failed")


if __name__ == "__main__":
    main()
