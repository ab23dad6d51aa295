"""docs/reliability.md states how many test cases hold each promise: the page and the suite must agree."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def collected(files: list[str]) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files], cwd=REPO,
                         capture_output=True, text=True, timeout=300).stdout
    counts = dict.fromkeys(files, 0)
    for line in out.splitlines():
        name = line.split("::", 1)[0]
        if "::" in line and name in counts:
            counts[name] += 1
    return counts


def test_the_reliability_page_counts_the_suite_as_it_is() -> None:
    page = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [line for line in page.splitlines() if line.startswith("|") and "`tests/test_" in line]
    assert len(rows) >= 8
    stated: list[tuple[list[str], int]] = []
    kinds = 0
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        files = re.findall(r"`(tests/test_[a-z_]+\.py)`", cells[-3])
        stated.append((files, sum(int(n) for n in re.findall(r"\d+", cells[-1].replace(",", "")))))
        kinds += int(cells[-2])
    counts = collected([f for files, _ in stated for f in files])
    for files, cases in stated:
        assert sum(counts[f] for f in files) == cases, (files, {f: counts[f] for f in files}, cases)
    total = re.search(r"([\d,]+) kinds of fault in ([\d,]+) test cases", page)
    assert total is not None
    assert int(total.group(1).replace(",", "")) == kinds
    assert int(total.group(2).replace(",", "")) == sum(c for _, c in stated)
