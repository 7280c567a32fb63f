"""The documentation's own links: every relative link names a file that exists, and a heading there.

The README is short and points into docs/; moving a section must not leave a link pointing at
nothing. Anchors follow GitHub's rule: the heading lower-cased, punctuation dropped, spaces as -.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import ROOT

DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "bench" / "RESULTS.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(document: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", document.read_text(), flags=re.M | re.S)  # no code blocks
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_readme_is_a_five_minute_read():
    assert len((ROOT / "README.md").read_text().splitlines()) < 150


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_name_an_existing_file_and_heading(document: Path):
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, file:, mailto: are not checked here
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.name}: {target} names no file"
        if anchor:
            assert anchor in anchors(linked), f"{document.name}: {target} names no heading"
