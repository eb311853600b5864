"""The reference pattern task against the 2018 code: error vs episode and vs wall time.

Trains `--preset reference` (1000-bit patterns, 106 steps, batch 1, learned eta) with the
defaults a user gets, once per seed, evaluating every `--eval-every` episodes on the
preset's fixed held-out episodes, and prints the all-bit error (the 2018 code's metric,
chance 0.25) with its 95% interval next to the 2018 code's figures from TASKS.md, and
the training wall time (evaluation excluded) at which each seed first reached 0.0005.

    python benchmarks/bench_fidelity.py --seeds 0 1 2
    python benchmarks/bench_fidelity.py --seeds 0 --episodes 400 --eval-every 100 --json out.json

The 2018 code: 0.083 after 100 episodes, 0.0064 after 200, 0.0014 after 500, 0.0005 after
900, at ~0.42 s per episode on a 2-core CPU (~380 s to 0.0005). Goal: <= 0.0005 in under
a third of that (127 s). Timings depend on what else runs on the machine: say so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REFERENCE_2018 = {100: 0.083, 200: 0.0064, 500: 0.0014, 900: 0.0005}
"""All-bit error of the 2018 code after that many episodes (TASKS.md)."""
SECONDS_PER_EPISODE_2018 = 0.42
TARGET = 0.0005


def run_seed(seed: int, args) -> list[dict]:
    from plasticity.config import preset
    from plasticity.train import train

    overrides = dict(seed=seed, episodes=args.episodes, eval_every=args.eval_every,
                     save_every=args.episodes, out=args.out)
    for name in ("eval_episodes", "batch_size", "lr", "eta", "eta_lr", "lr_schedule", "lr_final", "max_minutes"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_learn_eta:
        overrides["learn_eta"] = False
    cfg = preset("patterns", "reference", **overrides)
    result = train(cfg, progress=False)
    rows, eval_total = [], 0.0
    for h in result.history:
        # perf/elapsed_s is read just before that evaluation: it holds the earlier ones only.
        rows.append({"seed": seed, "episode": h["step"], "train_s": h["perf/elapsed_s"] - eval_total,
                     "eval_s": h.get("perf/eval_s", float("nan")), "err_all": h["eval/bit_error_all"],
                     "err_all_ci95": h.get("eval/bit_error_all_ci95", float("nan")),
                     "err_erased": h["eval/bit_error_erased"], "eta": h.get("plastic/eta_mean", float("nan"))})
        eval_total += h.get("perf/eval_s", 0.0)
    return rows


def first_reaching(rows: list[dict], target: float) -> dict | None:
    return next((r for r in rows if r["err_all"] <= target), None)


def print_table(rows: list[dict]) -> None:
    print(f"{'seed':>4} {'episode':>7} {'train s':>8} {'all-bit error':>20} {'2018 code':>9} "
          f"{'erased-bit':>10} {'eta':>8} {'eval s':>6}")
    for r in rows:
        ref = REFERENCE_2018.get(r["episode"])
        ref_s = f"{ref:.4f}" if ref is not None else ""
        err = f"{r['err_all']:.5f} +- {r['err_all_ci95']:.5f}"
        print(f"{r['seed']:>4} {r['episode']:>7} {r['train_s']:>8.1f} {err:>20} {ref_s:>9} "
              f"{r['err_erased']:>10.5f} {r['eta']:>8.5f} {r['eval_s']:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-episodes", type=int, default=None, help="default: the preset's (512)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's (1)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--eta", type=float, default=None, help="initial eta (default: the preset's 0.005)")
    ap.add_argument("--eta-lr", type=float, default=None)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None, help="default: the preset's")
    ap.add_argument("--lr-final", type=float, default=None, help="default: the preset's")
    ap.add_argument("--no-learn-eta", action="store_true", help="keep eta fixed at its initial value")
    ap.add_argument("--max-minutes", type=float, default=None, help="cap per seed (training + evaluation)")
    ap.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.episodes < 1 or args.eval_every < 1:
        print("bench_fidelity: --episodes and --eval-every must be >= 1", file=sys.stderr)
        return 2
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory()
        args.out = tmp.name
    rows = []
    for seed in args.seeds:
        seed_rows = run_seed(seed, args)
        rows += seed_rows
        print_table(seed_rows)
        print(flush=True)
    print(f"2018 code: {TARGET} after 900 episodes, ~{900 * SECONDS_PER_EPISODE_2018:.0f} s at "
          f"{SECONDS_PER_EPISODE_2018} s/episode; goal: under {900 * SECONDS_PER_EPISODE_2018 / 3:.0f} s")
    for seed in args.seeds:
        hit = first_reaching([r for r in rows if r["seed"] == seed], TARGET)
        seed_rows = [r for r in rows if r["seed"] == seed]
        per_ep = seed_rows[-1]["train_s"] / seed_rows[-1]["episode"]
        if hit is None:
            print(f"seed {seed}: all-bit error {seed_rows[-1]['err_all']:.5f} after {seed_rows[-1]['episode']} "
                  f"episodes ({seed_rows[-1]['train_s']:.0f} s training, {per_ep:.3f} s/episode): not yet <= {TARGET}")
        else:
            print(f"seed {seed}: <= {TARGET} at episode {hit['episode']} after {hit['train_s']:.0f} s of training "
                  f"({per_ep:.3f} s/episode; error {hit['err_all']:.5f} +- {hit['err_all_ci95']:.5f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
