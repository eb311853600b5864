"""The README's quick commands run as written, and what it links to exists.

Which commands run: a command of a ```bash block in README.md runs when its words start
with one of QUICK's prefixes (commands that take seconds). Every prefix must match at
least one README command, so a README edit that breaks, renames or drops a quick command
fails here. The README's slower commands (the sweep, full trainings, the cluster) are
covered by their own tests; a quick command may not hold a placeholder such as `<run>`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


@dataclass(frozen=True)
class Quick:
    prefix: str
    """The command's first words; every README command that starts with them runs."""
    says: tuple[str, ...]
    """Text its output (stdout and stderr) must hold."""
    writes: tuple[str, ...] = ()
    """Globs, relative to the working directory, that must match a file afterwards."""
    slow: bool = False
    """Marked `slow`: it trains (and on a fresh machine builds the C++ kernels first)."""


QUICK = [
    Quick("plasticity --help", says=("train", "evaluate", "data", "sweep", "serve")),
    Quick("plasticity train patterns --help", says=("--preset", "--episodes")),
    Quick("plasticity sweep --help", says=("--num-samples", "--max-concurrent")),
    Quick("plasticity serve --help", says=("--port",)),
    Quick("python -m cluster.local --help", says=("--bind", "--expose")),
    # Here without the example installed: the answer says how a plugin is loaded.
    Quick("plasticity plugins", says=("plasticity.plugins",)),
    Quick("plasticity train patterns --preset small --episodes", says=("done: runs/patterns__plastic__",),
          writes=("runs/patterns__plastic__*/checkpoint.pt", "mlruns.db"), slow=True),
]


def bash_blocks(text: str) -> list[list[str]]:
    """The lines of each ```bash block."""
    blocks, block = [], None
    for line in text.splitlines():
        if block is None:
            if line.strip() == "```bash":
                block = []
        elif line.strip() == "```":
            blocks.append(block)
            block = None
        else:
            block.append(line)
    return blocks


def commands(text: str) -> list[list[str]]:
    """Every command of the README's bash blocks as its words: lines ending in a backslash
    joined to the next, comments dropped, blank lines skipped."""
    found = []
    for block in bash_blocks(text):
        joined = "\n".join(block).replace("\\\n", " ")
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                found.append(words)
    return found


def matching(quick: Quick) -> list[list[str]]:
    prefix = quick.prefix.split()
    return [words for words in commands(README.read_text()) if words[: len(prefix)] == prefix]


def executable(word: str) -> str:
    """`plasticity` and `python` as installed beside the interpreter running the tests."""
    if word == "python":
        return sys.executable
    beside = Path(sys.executable).parent / word
    return str(beside) if beside.exists() else (shutil.which(word) or word)


@pytest.mark.parametrize(
    "quick", [pytest.param(q, id=q.prefix, marks=[pytest.mark.slow] if q.slow else []) for q in QUICK])
def test_quick_readme_command_runs(quick: Quick, tmp_path):
    found = matching(quick)
    assert found, (f"README.md has no ```bash command starting with `{quick.prefix}`: "
                   f"update QUICK in {Path(__file__).name} if the README changed on purpose")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the README's commands track to ./mlruns.db unless told otherwise
    env.pop("MLFLOW_TRACKING_URI", None)
    for words in found:
        shown = shlex.join(words)
        assert not re.search(r"<\w+>", shown), f"a quick README command holds a placeholder: {shown}"
        proc = subprocess.run([executable(words[0]), *words[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"`{shown}` exited {proc.returncode}:\n{output[-3000:]}"
        assert "Traceback" not in output, f"`{shown}`:\n{output[-3000:]}"
        for text in quick.says:
            assert text in output, f"`{shown}` did not print {text!r}:\n{output[-3000:]}"
        for pattern in quick.writes:
            assert list(tmp_path.glob(pattern)), f"`{shown}` wrote nothing matching {pattern} in {tmp_path}"


def test_readme_commands_are_found():
    """The parser sees the README's commands (a broken parser would make the test above vacuous)."""
    found = commands(README.read_text())
    assert ". .venv/bin/activate && python -m pytest".split() in found
    assert any(words[:4] == "python3.11 -m venv .venv".split() for words in found)


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_readme_links_exist():
    """Every relative link of the README points at a file or folder of the repository, and
    a link into a docs page at one of its headings (the site's strict build checks links
    between pages, not the README's)."""
    text = README.read_text()
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", link)]
    assert links, "no relative links found in README.md"
    missing = [link for link in links if not (REPO / link.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    for link in (link for link in links if "#" in link):
        page, anchor = link.split("#")
        headings = re.findall(r"^#+ (.+)$", (REPO / page).read_text(), flags=re.M)
        assert anchor in {slug(h) for h in headings}, f"README.md links to {link}: {page} has no such heading"


def extras(text: str) -> set[str]:
    found = re.findall(r'-e "\.\[([a-z,-]+)\]"', text)
    assert found, "no `pip install -e \".[...]\"` line found"
    return {extra for group in found for extra in group.split(",")}


def test_readme_installs_what_ci_installs():
    """The README's set-up command and CI install the same extras (CI runs the README's tests)."""
    assert extras(README.read_text()) == extras((REPO / ".ci" / "run").read_text())
