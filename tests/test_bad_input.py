"""Bad input, as a user types it: each case runs the real CLI and must print exactly one
line on stderr naming the problem and the fix, exit 2 (usage) or 1 (run time), show no
traceback, and leave an existing run folder and its checkpoint untouched."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from plasticity.config import preset
from plasticity.train import save_checkpoint


def run(args: list[str], cwd: Path, limit_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([sys.executable, "-m", "plasticity.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, preexec_fn=limit, env={**os.environ, "PLASTICITY_DATA": str(cwd / "nodata")})


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with one finished small run (`runs/<run>/checkpoint.pt`) and damaged inputs."""
    root = tmp_path_factory.mktemp("bad-input")
    done = run(["train", "patterns", "--preset", "small", "--episodes", "64", "--eval-every", "64", "--eval-episodes",
                "32", "--no-tracking", "--no-progress"], root)
    assert done.returncode == 0, done.stderr
    ckpt = next(root.glob("runs/*/checkpoint.pt"))
    (root / "ckpt").symlink_to(ckpt)
    # A checkpoint whose config asks for a network far too large to allocate.
    cfg = preset("patterns", "small").to_dict()
    cfg["pattern_size"] = 200_000
    save_checkpoint(root / "huge.pt", model=torch.nn.Linear(1, 1), config=cfg, episode=0)
    (root / "truncated.pt").write_bytes(ckpt.read_bytes()[:1000])
    (root / "afile").write_text("not a folder")
    # Omniglot: a zip with a stray file at the top level, and a truncated zip.
    omni = root / "omni" / "omniglot"
    omni.mkdir(parents=True)
    with zipfile.ZipFile(omni / "images_background_small1.zip", "w") as z:
        z.writestr("README.txt", "stray file at the top")
    cifar = root / "cifar" / "cifar10"
    cifar.mkdir(parents=True)
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        (cifar / name).write_bytes(b"\x80\x02}q\x00(U\x04data")  # a pickle cut short
    return root


CASES = [
    # (id, args, exit code, words the line must contain)
    ("lr-nan", ["train", "patterns", "--lr", "nan"], 2, "--lr must be a finite number"),
    ("lr-inf", ["train", "patterns", "--lr", "inf"], 2, "--lr must be a finite number"),
    ("lr-huge", ["train", "patterns", "--lr", "1e38"], 2, "--lr 1e+38 is too large"),
    ("eta-nan", ["train", "patterns", "--eta", "nan"], 2, "--eta must be a finite number"),
    ("clip-nan", ["train", "patterns", "--clip", "nan"], 2, "--clip must be a finite number"),
    ("grad-clip-inf", ["train", "patterns", "--grad-clip", "inf"], 2, "--grad-clip must be a finite number"),
    ("max-minutes-nan", ["train", "patterns", "--max-minutes", "nan"], 2, "--max-minutes must be a finite number"),
    ("huge-seed", ["train", "patterns", "--seed", str(10**30)], 2, "--seed is too large"),
    ("negative-seed", ["train", "patterns", "--seed", "-1"], 2, "seed must be >= 0"),
    ("zero-batch", ["train", "patterns", "--batch-size", "0"], 2, "batch_size must be > 0"),
    ("huge-pattern", ["train", "patterns", "--pattern-size", "200000"], 2, "GiB"),
    ("not-a-number", ["train", "patterns", "--lr", "abc"], 2, "Error parsing --lr"),
    ("float-for-int", ["train", "patterns", "--episodes", "1.5"], 2, "Error parsing --episodes"),
    ("unknown-flag", ["train", "patterns", "--bogus", "1"], 2, "Unrecognized options: --bogus"),
    ("unknown-task", ["train", "bogus"], 2, "unknown task 'bogus'"),
    ("unknown-rule", ["train", "patterns", "--rule", "bogus"], 2, "unknown plasticity rule 'bogus'"),
    ("out-not-a-folder", ["train", "patterns", "--preset", "small", "--no-tracking", "--out", "afile/runs"], 1,
     "pass --out with a writable folder"),
    ("resume-missing", ["train", "patterns", "--resume", "nothere.pt"], 2, "checkpoint nothere.pt not found"),
    ("resume-truncated", ["train", "patterns", "--resume", "truncated.pt"], 2, "not a readable checkpoint"),
    ("resume-huge-config", ["train", "patterns", "--resume", "huge.pt", "--no-tracking"], 2, "GiB"),
    ("evaluate-huge-config", ["evaluate", "huge.pt"], 2, "GiB"),
    ("resume-other-task", ["train", "maze", "--resume", "ckpt", "--no-tracking"], 2, "is a 'patterns' run"),
    ("resume-change-size", ["train", "patterns", "--resume", "ckpt", "--pattern-size", "60", "--no-tracking"], 2,
     "--pattern-size cannot change when resuming"),
    ("evaluate-bad-split", ["evaluate", "ckpt", "--split", "bogus"], 2, "has no data splits"),
    ("evaluate-bad-episodes", ["evaluate", "ckpt", "--episodes", "0"], 2, "episodes must be > 0"),
    ("omniglot-stray-file", ["train", "omniglot", "--data-dir", "omni", "--no-tracking"], 2,
     "holds no <Alphabet>/<character>/*.png drawings"),
    ("cifar-truncated", ["train", "images", "--data-dir", "cifar", "--no-tracking"], 2, "data_batch_1"),
]


@pytest.mark.parametrize("args,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(workdir, args, code, words):
    before = snapshot(workdir / "runs")
    done = run(args, workdir)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("plasticity: error: ") and words in lines[0], lines[0]
    assert snapshot(workdir / "runs") == before


def test_a_full_disk_keeps_the_previous_checkpoint(workdir, tmp_path):
    """Files may grow to 1 kB only (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail
    with EFBIG as on a full disk): the resumed run cannot save and says so."""
    ckpt = next(workdir.glob("runs/*/checkpoint.pt"))
    folder = tmp_path / "run"
    folder.mkdir()
    for p in ckpt.parent.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    before = (folder / "checkpoint.pt").read_bytes()
    done = run(["train", "patterns", "--resume", str(folder / "checkpoint.pt"), "--episodes", "128",
                "--no-tracking", "--no-progress"], workdir, limit_file_bytes=1024)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # The resume line and the kernels' line, then one error line.
    lines = done.stderr.splitlines()
    assert [line for line in lines if "error" in line] == lines[-1:], done.stderr
    assert lines[-1].startswith("plasticity: error: ") and "free disk space" in lines[-1]
    assert (folder / "checkpoint.pt").read_bytes() == before
    assert not list(folder.glob(".*.tmp"))


def test_stale_temporary_files_are_removed_on_the_next_save(tmp_path):
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "checkpoint.pt", model=torch.nn.Linear(2, 2), config={}, episode=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_help_shows_each_option_once(workdir):
    done = run(["train", "patterns", "--help"], workdir)
    assert done.returncode == 0
    # Option lines start with the flag(s) one space in (`│ --lr FLOAT   Adam ...`); the
    # continuation lines of a help text are indented further.
    heads = [line.lstrip("│")[1:].split("  ")[0] for line in done.stdout.splitlines()
             if line.lstrip("│").startswith(" --")]
    flags = [w.rstrip(",") for head in heads for w in head.split() if w.startswith("--")]
    options = [f for f in flags if f in ("--lr", "--episodes", "--tracking", "--no-tracking", "--task")]
    assert sorted(options) == ["--episodes", "--lr", "--no-tracking", "--tracking"], options
