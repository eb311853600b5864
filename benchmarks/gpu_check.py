"""One GPU check of the fused path, ready to run on a GPU machine in under 5 minutes.

    python3 benchmarks/gpu_check.py --fetch-wheels   # once, on a machine with network: tyro and
                                                     # its two dependencies into .whl/ (git-ignored)
    python3 benchmarks/gpu_check.py                  # on the GPU machine, from the repository root

It needs a python with torch (CUDA), triton, numpy, pytest, tqdm, matplotlib and pillow
(a GPU image with PyTorch has them) and runs the project from this source tree
(PYTHONPATH, nothing installed); the command line's `tyro` and its dependencies are
installed from .whl/ into a temporary folder when they do not import (the GPU machine
may have no network). Then, each step with its own time limit:

  1. the `gpu`-marked tests: the Triton kernels on CUDA against the naive float64 loop
     (values and gradients, every fused rule, clip, alpha / eta modes, bfloat16
     storage), and the fused path on CUDA against the same on CPU;
  2. `plasticity train patterns --preset small --device cuda --no-tracking` (bounded);
  3. `benchmarks/bench_plastic.py --device cuda`: episodes/s of the naive, autograd and
     fused paths (Triton kernels, torch-op kernels, bfloat16 storage) at the reference
     pattern and image sizes, each row against the HBM floor measured by a device copy
     in the row's own process.

It prints one table (also written, with each step's log, to $OUT or ./gpu_check_out)
and exits non-zero if a step failed. Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
# tyro as pinned in pyproject.toml, and the versions of its dependencies tested with it.
CLI_WHEELS = ["tyro==1.0.17", "docstring-parser==0.18.0", "typeguard==4.6.1"]
LIMITS_S = {"tests": 100, "train": 55, "bench-patterns": 90, "bench-images": 45}
"""Per step; together under 5 minutes, with the start-up checks."""


def fetch_wheels() -> int:
    """Download the command line's wheels (pure Python) for a machine without network."""
    WHEELS.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(WHEELS),
           *CLI_WHEELS]
    proc = subprocess.run(cmd)
    if proc.returncode == 0:
        print(f"wheels in {WHEELS}: {', '.join(sorted(p.name for p in WHEELS.glob('*.whl')))}")
    return proc.returncode


def environment(out: Path) -> dict[str, str]:
    """The environment of every step: this tree on PYTHONPATH, plus the CLI wheels if missing."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)
    paths = [str(REPO)]
    probe = subprocess.run([sys.executable, "-c", "import tyro"], capture_output=True, env=env)
    if probe.returncode != 0:
        wheels = sorted(WHEELS.glob("*.whl"))
        if not wheels:
            fail(f"tyro does not import and there are no wheels in {WHEELS}: run "
                 "`python3 benchmarks/gpu_check.py --fetch-wheels` on a machine with network and bring .whl/ along")
        site = Path(tempfile.mkdtemp(prefix="plasticity-site-"))
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--target", str(site), *map(str, wheels)], capture_output=True, text=True)
        if pip.returncode != 0:
            fail(f"installing {WHEELS}/*.whl failed: {pip.stderr.strip().splitlines()[-1:]}")
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else paths)
    env["MPLBACKEND"] = "Agg"
    return env


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    sys.exit(2)


def describe(env: dict[str, str]) -> str:
    """One line: GPU, driver, torch, triton; stops with a message where CUDA or triton is missing."""
    code = ("import torch, sys\n"
            "if not torch.cuda.is_available(): sys.exit('torch ' + torch.__version__ + ' sees no CUDA device')\n"
            "try:\n    import triton\nexcept ImportError as e:\n    sys.exit(f'triton does not import ({e})')\n"
            "p = torch.cuda.get_device_properties(0)\n"
            "print(f'{p.name} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs), torch '"
            " f'{torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        fail(f"{(proc.stderr.strip().splitlines() or ['python failed'])[-1]}: run this on a machine with a GPU, "
             "torch built for CUDA and triton")
    return proc.stdout.strip()


def step(name: str, cmd: list[str], env: dict[str, str], out: Path) -> tuple[int | None, float, str]:
    """Run one step with its time limit; its output goes to out/<name>.log.
    Returns (exit status or None on timeout, seconds, output)."""
    t0 = time.perf_counter()
    print(f"gpu_check: {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=LIMITS_S[name])
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        text = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    (out / f"{name}.log").write_text(text)
    return rc, time.perf_counter() - t0, text


def status(rc: int | None, limit: int) -> str:
    return "ok" if rc == 0 else (f"timed out ({limit} s)" if rc is None else f"FAILED (exit {rc})")


def pytest_summary(text: str) -> str:
    words = (" passed", " failed", " error", " skipped", " deselected")
    lines = [ln.strip("= ") for ln in text.splitlines() if any(w in ln for w in words) and " in " in ln]
    return lines[-1] if lines else "no summary (see tests.log)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fetch-wheels", action="store_true", help="download the CLI wheels into .whl/ and stop")
    ap.add_argument("--device", default="cuda", help="cpu: try the script itself here (tiny sizes, gpu tests skip)")
    args = ap.parse_args()
    if args.fetch_wheels:
        return fetch_wheels()
    out = Path(os.environ.get("OUT") or REPO / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = environment(out)
    machine = describe(env) if args.device == "cuda" else f"{args.device} (a dry run of the script: no GPU)"
    print(f"gpu_check: {machine}", file=sys.stderr, flush=True)
    rows: list[tuple[str, ...]] = []
    failed = 0

    rc, secs, text = step("tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                    "tests/test_fused_triton.py", "-rfs"], env, out)
    failed += rc != 0
    rows.append(("gpu tests: Triton vs naive, CUDA vs CPU", status(rc, LIMITS_S["tests"]), pytest_summary(text),
                 "", "", "", f"{secs:.0f}"))

    run_dir = Path(tempfile.mkdtemp(prefix="plasticity-train-"))
    rc, secs, text = step("train", [sys.executable, "-m", "plasticity.cli", "train", "patterns", "--preset", "small",
                                    "--device", args.device, "--no-tracking", "--no-progress", "--episodes", "6000",
                                    "--eval-every", "2000", "--max-minutes", "0.4", "--out", str(run_dir)], env, out)
    failed += rc != 0
    detail, eps = "", ""
    history = sorted(run_dir.glob("*/metrics.jsonl"))
    if history:
        last = json.loads(history[0].read_text().splitlines()[-1])
        eps = f"{last.get('perf/episodes_per_s', float('nan')):.0f}"
        detail = f"{last['step']} episodes, held-out bit error {last.get('eval/bit_error_erased', float('nan')):.3f}"
    kernels = next((ln.split("fused kernels:")[1].strip() for ln in text.splitlines() if "fused kernels:" in ln), "?")
    rows.append((f"train patterns --preset small --device {args.device}", status(rc, LIMITS_S["train"]),
                 f"{detail}; kernels {kernels}", eps, "", "", f"{secs:.0f}"))
    shutil.rmtree(run_dir, ignore_errors=True)

    bench = [sys.executable, "benchmarks/bench_plastic.py", "--device", args.device, "--reps", "3",
             *([] if args.device == "cuda" else ["--smoke-test"])]
    for name, extra in (("bench-patterns", ["--sizes", "patterns", "--paths", "naive", "autograd", "fused",
                                            "fused-torch", "fused-bf16", "--batches", "1", "32"]),
                        ("bench-images", ["--sizes", "images", "--paths", "fused", "fused-torch", "fused-bf16",
                                          "--batches", "32"])):
        rows_file = out / f"{name}.jsonl"
        rc, secs, text = step(name, [*bench, *extra, "--json", str(rows_file)], env, out)
        failed += rc != 0
        rows.append((f"bench_plastic.py {' '.join(extra[:2])} --device {args.device}", status(rc, LIMITS_S[name]),
                     f"rows below; the full output in {name}.log", "", "", "", f"{secs:.0f}"))
        for r in (json.loads(ln) for ln in rows_file.read_text().splitlines()) if rows_file.is_file() else ():
            eps, floor = r["episodes_per_s"], r["floor_episodes_per_s"]
            rows.append((f"  {r['size']} {r['path']} ({r['kernels']}) batch {r['batch']}", "",
                         f"copy {r['copy_gbs']:.0f} GB/s", f"{eps:.1f}", f"{floor:.1f}", f"{100 * eps / floor:.0f}%",
                         f"peak {r['peak_mib']:.0f} MiB"))

    header = ("check", "result", "detail", "episodes/s", "floor ep/s", "% floor", "s / memory")
    table = [f"GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {machine}; "
             f"{time.perf_counter() - started:.0f} s in all", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(table) + "\n"
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
