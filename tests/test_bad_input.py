"""Bad input, as a user types it: each case runs the real CLI (`plasticity ...`, or
`python -m cluster.local ...`) and must print exactly one line on stderr naming the
problem and the fix, exit 2 (usage) or 1 (run time), show no traceback, print no password,
and leave the working folder (an existing run folder and its checkpoint included) untouched."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import re
import resource
import struct
import subprocess
import sys
import termios
import zipfile
from pathlib import Path

import pytest
import torch

from plasticity.config import preset
from plasticity.train import save_checkpoint

MODULES = ("cluster.local",)
"""Programs other than `plasticity` that a case may run (its first argument)."""

PASSWORD = "s3cret-pw-42"
"""The password in the cases' database URIs: it must never be printed."""


def run(args: list[str], cwd: Path, limit_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    module, args = (args[0], args[1:]) if args[0] in MODULES else ("plasticity.cli", args)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, preexec_fn=limit, env={**os.environ, "PLASTICITY_DATA": str(cwd / "nodata")})


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def damaged_checkpoint(source: Path, target: Path, change) -> None:
    """`source` (a real checkpoint) with `change(payload)` applied, saved to `target`."""
    payload = torch.load(source, weights_only=True)
    change(payload)
    torch.save(payload, target)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with one finished small run (`runs/<run>/checkpoint.pt`) and damaged inputs."""
    root = tmp_path_factory.mktemp("bad-input")
    done = run(["train", "patterns", "--preset", "small", "--episodes", "64", "--eval-every", "64", "--eval-episodes",
                "32", "--no-tracking", "--no-progress"], root)
    assert done.returncode == 0, done.stderr
    ckpt = next(root.glob("runs/*/checkpoint.pt"))
    (root / "ckpt").symlink_to(ckpt)
    (root / "ckpt.png").symlink_to(ckpt)  # a checkpoint whose name matplotlib could write over
    # A checkpoint whose config asks for a network far too large to allocate.
    cfg = preset("patterns", "small").to_dict()
    cfg["pattern_size"] = 200_000
    save_checkpoint(root / "huge.pt", model=torch.nn.Linear(1, 1), config=cfg, episode=0)
    (root / "truncated.pt").write_bytes(ckpt.read_bytes()[:1000])
    (root / "afile").write_text("not a folder")
    (root / "notes.txt").write_text("a text file, not a checkpoint\n")
    damaged_checkpoint(ckpt, root / "config-list.pt", lambda p: p.update(config=["patterns"]))
    damaged_checkpoint(ckpt, root / "config-types.pt", lambda p: p["config"].update(pattern_size="big"))
    damaged_checkpoint(ckpt, root / "weights-shape.pt", lambda p: p["model"].update(
        {name: torch.zeros(3) for name in list(p["model"])[:1]}))
    damaged_checkpoint(ckpt, root / "no-optimizer.pt", lambda p: p.update(optimizer=None))
    damaged_checkpoint(ckpt, root / "rng-damaged.pt", lambda p: p["rng"].update(torch=torch.zeros(3)))
    damaged_checkpoint(ckpt, root / "loop-damaged.pt", lambda p: p["loop"].update(elapsed_s="ten"))
    # Env files for the cluster launcher: not UTF-8 on line 2, and a line that is not KEY=value.
    (root / "latin1.env").write_bytes(b"A=1\nB=caf\xe9\n")
    (root / "nul.env").write_bytes(b"A=1\nB=x\x00y\n")
    (root / "badline.env").write_text("A=1\nthis is not a setting\n")
    # Search spaces (--space) with a step on a log scale, and a `when` that is not a mapping.
    (root / "logstep.yaml").write_text("eta: {type: float, low: 0.001, high: 0.5, log: true, step: 0.1}\n")
    (root / "when-list.yaml").write_text("use_clip: {type: categorical, choices: [true]}\n"
                                        "clip: {type: float, low: 0.5, high: 2, when: [use_clip]}\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00eta")
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
    # An episode that cannot fit: the memory check counts the episode's length (issue 27).
    *[(f"huge{flag}", ["train", "patterns", "--preset", "small", flag, str(10**9), "--no-tracking"], 2,
       "steps per episode") for flag in ("--num-patterns", "--num-cycles", "--present-steps", "--gap-steps",
                                         "--test-steps")],
    ("huge-maze-steps", ["train", "maze", "--episode-steps", str(10**9), "--no-tracking"], 2,
     "1000000000 steps per episode"),
    ("huge-maze-size", ["train", "maze", "--maze-size", str(10**9 + 1), "--no-tracking"], 2, "GiB"),
    ("huge-images", ["train", "images", "--num-images", str(10**9), "--no-tracking"], 2, "steps per episode"),
    ("autograd-long-episode", ["train", "patterns", "--impl", "autograd", "--num-cycles", "2000", "--no-tracking"],
     2, "lower the sizes, the episode length or --batch-size"),
    # Evaluations that would not end: refused with the largest count that would.
    ("huge-eval-episodes", ["train", "patterns", "--preset", "small", "--eval-episodes", str(10**9),
                            "--no-tracking"], 2, "is too many for one evaluation"),
    ("evaluate-huge-episodes", ["evaluate", "ckpt", "--episodes", str(10**9)], 2,
     "--episodes 1000000000 is too many for one evaluation"),
    ("evaluate-huge-seed", ["evaluate", "ckpt", "--seed", str(10**30)], 2, "--seed"),
    # Files that are not what `plasticity train` writes.
    ("resume-text-file", ["train", "patterns", "--resume", "notes.txt", "--no-tracking"], 2,
     "notes.txt is not a readable checkpoint"),
    ("evaluate-text-file", ["evaluate", "notes.txt"], 2, "notes.txt is not a readable checkpoint"),
    ("resume-config-list", ["train", "patterns", "--resume", "config-list.pt", "--no-tracking"], 2,
     "its 'config' entry is not a mapping"),
    ("evaluate-config-list", ["evaluate", "config-list.pt"], 2, "its 'config' entry is not a mapping"),
    ("evaluate-config-types", ["evaluate", "config-types.pt"], 2,
     "holds a config this version refuses: --pattern-size must be an integer"),
    ("resume-weights-shape", ["train", "patterns", "--resume", "weights-shape.pt", "--no-tracking"], 2,
     "weights do not match the config stored with them (size mismatch"),
    ("resume-no-optimizer", ["train", "patterns", "--resume", "no-optimizer.pt", "--no-tracking"], 2,
     "holds no optimiser state"),
    ("resume-rng-damaged", ["train", "patterns", "--resume", "rng-damaged.pt", "--no-tracking"], 2,
     "its 'rng' entry is not the random streams"),
    ("resume-loop-damaged", ["train", "patterns", "--resume", "loop-damaged.pt", "--no-tracking"], 2,
     "its 'loop' entry is not the loop's counters"),
    # Figure paths are checked before the scoring (the checkpoint is never touched).
    ("evaluate-figure-pt", ["evaluate", "ckpt", "--figure", "out.pt"], 2, "matplotlib cannot write '.pt' files"),
    ("evaluate-figure-no-folder", ["evaluate", "ckpt", "--figure", "nowhere/out.png"], 2,
     "the folder nowhere does not exist"),
    ("evaluate-figure-is-checkpoint", ["evaluate", "ckpt.png", "--figure", "ckpt.png"], 2,
     "would overwrite the checkpoint"),
    ("out-empty", ["train", "patterns", "--out", "", "--no-tracking"], 2, "--out is empty"),
    # PostgreSQL stores that cannot be used: one short connection, the password masked.
    ("tracking-no-database", ["train", "patterns", "--preset", "small", "--tracking-uri",
                              f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/no_such_db_27"], 2,
     "the PostgreSQL server at 127.0.0.1:5432 has no database 'no_such_db_27'"),
    ("tracking-port-closed", ["train", "patterns", "--preset", "small", "--tracking-uri",
                              f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/test"], 2,
     "cannot reach the PostgreSQL server at 127.0.0.1:1 (connection refused)"),
    ("sweep-storage-port-closed", ["sweep", "--no-tracking", "--storage",
                                   f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"], 2,
     "cannot reach the PostgreSQL server at 127.0.0.1:1 (connection refused)"),
    ("sweep-storage-no-database", ["sweep", "--no-tracking", "--storage",
                                   f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/no_such_db_27"], 2,
     "has no database 'no_such_db_27'"),
    # The sweep's --fixed and --space.
    ("sweep-fixed-unknown", ["sweep", "--fixed", "no_such_field=1"], 2,
     "--fixed names unknown patterns field no_such_field: choose from alpha_mode"),
    ("sweep-fixed-wrong-type", ["sweep", "--fixed", "lr=abc"], 2, "--lr must be a number, got 'abc'"),
    ("sweep-space-log-step", ["sweep", "--space", "logstep.yaml"], 2, "both log: true and a step"),
    ("sweep-space-when-list", ["sweep", "--space", "when-list.yaml"], 2, "has when: ['use_clip']"),
    ("sweep-space-binary", ["sweep", "--space", "binary.yaml"], 2, "is not UTF-8 text"),
    # The cluster launcher's env file: file and line number.
    ("env-file-not-utf8", ["cluster.local", "--env-file", "latin1.env", "--state-dir", "cluster-state", "status"], 2,
     "latin1.env:2: not UTF-8 text"),
    ("env-file-nul", ["cluster.local", "--env-file", "nul.env", "--state-dir", "cluster-state", "status"], 2,
     "nul.env:2: a NUL byte"),
    ("env-file-bad-line", ["cluster.local", "--env-file", "badline.env", "--state-dir", "cluster-state", "status"], 2,
     "badline.env:2: expected KEY=value"),
    # plasticity serve: flags checked before Ray starts, the checkpoint too.
    ("serve-port-range", ["serve", "ckpt", "--port", "70000"], 2, "--port 70000 is not a TCP port"),
    ("serve-threads-negative", ["serve", "ckpt", "--threads", "-1"], 2, "threads must be >= 0"),
    ("serve-port-not-a-number", ["serve", "ckpt", "--port", "abc"], 2, "Error parsing --port"),
    ("serve-text-file", ["serve", "notes.txt"], 2, "notes.txt is not a readable checkpoint"),
]


@pytest.mark.parametrize("args,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(workdir, args, code, words):
    before = snapshot(workdir)
    done = run(args, workdir)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert PASSWORD not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    # `plasticity: error: `, `plasticity sweep: error: `, `cluster.local: error: `
    assert re.match(r"[\w. ]+: error: ", lines[0]) and words in lines[0], lines[0]
    assert snapshot(workdir) == before


def test_a_long_evaluation_shows_progress_on_a_terminal(tmp_path):
    """`plasticity evaluate` with stderr on a terminal: a bar with the count and tqdm's
    estimate of the time left, once the scoring has run for 2 s (a pseudo-terminal here).
    The network is the reference pattern network (1001 neurons, 106 steps: about 0.1 s
    per episode here), untrained: 256 episodes take several seconds on any machine."""
    from plasticity.tasks import make_task

    cfg = preset("patterns", "reference")
    save_checkpoint(tmp_path / "reference.pt", model=make_task(cfg).build_model(cfg), config=cfg.to_dict(), episode=0)
    leader, follower = pty.openpty()
    # A terminal of 100 x 24 (a new pseudo-terminal has 0 columns, where tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run([sys.executable, "-m", "plasticity.cli", "evaluate", "reference.pt", "--episodes", "256",
                               "--figure", "progress.png"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=follower,
                              timeout=600)
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed once everything is read
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    # tqdm's bar: "evaluating:  50%|#####     | 128/256 [00:03<00:03, 39.8ep/s]"
    assert re.search(r"evaluating: +\d+%.*\d+/256 \[[\d:]+<[\d:]+", text), text[-500:]


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
