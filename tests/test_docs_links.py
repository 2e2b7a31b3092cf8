"""Every relative link in README.md and docs/*.md resolves to a file of this repository (and a `#fragment` to a
heading of that file), so the docs read the same to someone who has only the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")        # [text](target) and ![alt](target)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)          # code is text, not links


def links(page: Path) -> list[str]:
    return LINK.findall(CODE.sub("", page.read_text()))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation other than `-` and `_` dropped, spaces to `-`."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", CODE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, does not resolve inside the repository; None when it does."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target):   # https:, mailto:: public pages are fine
        return None
    path, _, fragment = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.is_relative_to(REPO):
        return "leaves the repository"
    if not dest.exists():
        return "no such file"
    if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
        return f"no heading #{fragment}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page):
    found = links(page)
    bad = {t: why for t in found if (why := broken(page, t))}
    assert not bad, f"{page.relative_to(REPO)}: {bad}"


def test_the_checker_catches_what_it_should(tmp_path):
    """The checker itself: a missing file, a link out of the repository, a missing heading; code is not a link."""
    page = REPO / "docs" / "x.md"
    assert broken(page, "nope.md") == "no such file"
    assert broken(page, "../../shared/CONTRACT.md") == "leaves the repository"
    assert broken(page, "../README.md#no-such-heading") == "no heading #no-such-heading"
    assert broken(page, "../README.md#tests") is None and broken(page, "https://example.org/a") is None
    sample = tmp_path / "s.md"
    sample.write_text("# A b, c\n[x](y.md) `[z](w.md)` ![i](p.png)\n```\n[q](r.md)\n```\n")
    assert links(sample) == ["y.md", "p.png"] and anchors(sample) == {"a-b-c"}
