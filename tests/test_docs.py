"""The README stays the newcomer's page and its links into docs/ hold.

The docs site itself is checked by ``mkdocs build --strict`` in scripts/check.sh (broken
links, missing pages, pages left out of nav); the README is outside the site, so its links
are checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Markdown links [text](target), and the targets that leave the repository.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = ("http://", "https://", "mailto:")


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs give a heading (lower case, punctuation dropped)."""
    words = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return words.replace(" ", "-")


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move detail to docs/"


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not t.startswith(OUTSIDE)]
    assert len(targets) > 10  # the links were found
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    broken = []
    for target in targets:
        path, _, anchor = target.partition("#")
        found = (ROOT / path).is_file() if path else anchor in anchors
        if not found:
            broken.append(target)
    assert broken == [], f"README.md links to what does not exist: {broken}"


def test_pages_the_code_points_to_exist() -> None:
    """Messages and comments name README sections; the README says they are docs pages."""
    titles = {
        p.read_text(encoding="utf-8").splitlines()[0].removeprefix("# ")
        for p in (ROOT / "docs").rglob("*.md")
    }
    named = ("Running it for a real server", "PostgreSQL and Redis", "A GPU server")
    assert [n for n in named if not any(t.startswith(n) for t in titles)] == []
    assert any(t.startswith("Production") for t in titles)
