"""The README is one screen whose links all lead somewhere; the pages under docs/ build into a site
with `mkdocs build --strict`, so a broken link or anchor, or a page left out of the nav, fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

README = REPO / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slugs(page: Path) -> set[str]:
    """The anchors a code host and mkdocs give a page's headings (lowercase, punctuation dropped,
    spaces as hyphens), outside fenced code."""
    found: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"mkdocs build --strict failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "assets" / "dashboard.svg").is_file()


def test_the_readme_is_one_screen_and_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 80, f"README.md has {len(lines)} lines: move the rest into docs/"
    assert lines[0].split("#")[0].strip() == "make run", lines[0]
    assert lines[1].split("#")[0].strip() == "make test", lines[1]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "make test" in ci, "CI must run the README's test command"


def test_every_relative_link_in_the_readme_leads_to_a_file() -> None:
    links = LINK.findall(README.read_text(encoding="utf-8"))
    relative = [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link) and not link.startswith("#")]
    assert len(relative) >= 10, relative
    broken = []
    for link in relative:
        path, _, anchor = link.partition("#")
        target = (REPO / path).resolve()
        if not target.is_file() or REPO not in target.parents:
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in slugs(target):
            broken.append(link)
    assert not broken, f"README.md links to files or anchors that do not exist: {broken}"
