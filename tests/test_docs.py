"""The documentation site builds strictly (mkdocs.yml, docs/), and strict means strict: a
broken link, a broken anchor, a page left out of the nav or a missing README section
fails the build, as CI's `mkdocs build --strict` relies on."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason='mkdocs and mkdocs-material are not installed: pip install -e ".[docs]"')


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    # not -q: quiet mode hides the warnings, and a strict build then passes with them
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_docs_build_strict(tmp_path):
    proc = build(REPO, tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = (tmp_path / "site" / "index.html").read_text()
    # the README's two commands, included from README.md
    assert "embedded defaults" in home and "pytest" in home


def break_link(root: Path) -> None:
    with (root / "docs" / "data.md").open("a") as f:
        f.write("\n[a page that is not there](no-such-page.md)\n")


def break_anchor(root: Path) -> None:
    with (root / "docs" / "data.md").open("a") as f:
        f.write("\n[a section that is not there](sweeps.md#no-such-section)\n")


def add_page_outside_nav(root: Path) -> None:
    (root / "docs" / "orphan.md").write_text("# A page nobody links to\n")


def drop_readme_section(root: Path) -> None:
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("[start:two-commands]", "[start:renamed]"))


@pytest.mark.slow
@pytest.mark.parametrize("damage, says", [
    (break_link, "no-such-page.md"),
    (break_anchor, "no-such-section"),
    (add_page_outside_nav, "orphan.md"),
    (drop_readme_section, "two-commands"),
], ids=["broken-link", "broken-anchor", "page-outside-nav", "readme-section-missing"])
def test_docs_build_fails_on(damage, says, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "mkdocs.yml", root)
    shutil.copy(REPO / "README.md", root)
    shutil.copytree(REPO / "docs", root / "docs")
    damage(root)
    proc = build(root, tmp_path / "site")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the strict build passed after {damage.__name__}:\n{output}"
    assert says in output, output
