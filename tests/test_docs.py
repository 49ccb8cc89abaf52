"""The documentation's relative links resolve: every linked file exists, and every #anchor names a
heading.

Covers README.md, docs/*.md and the other READMEs of the repository (benchmarks/, checkpoints/,
data/, src/adamerging/mini/DESIGN.md). External links (http, mailto) are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def doc_files() -> list[Path]:
    """Every markdown page a reader is sent to: README.md, docs/, and the READMEs beside code and
    data."""
    found = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "src" / "adamerging" / "mini" / "DESIGN.md",
    ]
    found += [ROOT / d / "README.md" for d in ("benchmarks", "checkpoints", "data")]
    return [p for p in found if p.is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file or heading does not exist."""
    bad = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(target)
    return bad


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == []


def test_the_link_check_can_fail(tmp_path: Path):
    (tmp_path / "a.md").write_text(
        "# Top\n\n## A section\n[ok](#a-section) [ok](b.md#top) [bad](c.md) [bad](b.md#nowhere)\n"
    )
    (tmp_path / "b.md").write_text("# Top\n")
    assert broken_links(tmp_path / "a.md") == ["c.md", "b.md#nowhere"]


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {
        (ROOT / t.partition("#")[0]).resolve()
        for t in links(ROOT / "README.md")
        if not re.match(r"^[a-z]+:", t)
    }
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert missing == []


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
