"""The documentation holds together: links resolve, pointers name real sections, no machine paths.

Pure file reading: the README and docs/ pages, the scheduling README, and the pointers
``(see README, 'Section')`` / ``(see docs/PAGE.md, 'Section')`` in the package, conf/ and the
Makefile.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 300

#: ``](target)`` in Markdown, the target without a title.
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: A pointer to a section: ``README, 'Section'`` or ``docs/page.md, 'Section'``.
POINTER = re.compile(r"(?<![\w/])(README|docs/[\w-]+\.md),\s*'([^']+)'")
#: ``see README`` or ``see docs/page.md`` that names no section.
BARE_POINTER = re.compile(r"see (README|docs/[\w-]+\.md)(?!,\s*')")
MACHINE_PATH = re.compile(r"/(tmp|work|root|home)/")


def markdown_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def linked_pages() -> list[Path]:
    return [*markdown_pages(), ROOT / "mtl_celeba" / "scheduling" / "README.md"]


def pointer_sources() -> list[Path]:
    return [
        *sorted((ROOT / "mtl_celeba").rglob("*.py")),
        *sorted((ROOT / "conf").rglob("*.yaml")),
        ROOT / "Makefile",
    ]


def outside_code_fences(text: str) -> list[str]:
    """The lines of a Markdown text that are not inside a fenced code block."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def headings(path: Path) -> list[str]:
    """The heading texts of a Markdown file, without the leading #'s (code blocks skipped)."""
    return [
        line.lstrip("#").strip()
        for line in outside_code_fences(path.read_text(encoding="utf-8"))
        if re.match(r"#{1,6} ", line)
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of ``path`` (repeated slugs get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in headings(path):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def test_the_pages_exist() -> None:
    names = {path.name for path in markdown_pages()}
    assert {"README.md", "design.md", "contributing.md"} <= names


@pytest.mark.parametrize("page", linked_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = "\n".join(outside_code_fences(page.read_text(encoding="utf-8")))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no file {path_part}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_pointers_name_existing_sections() -> None:
    found, wrong = 0, []
    for source in pointer_sources():
        text = source.read_text(encoding="utf-8")
        for page, section in POINTER.findall(text):
            found += 1
            target = ROOT / ("README.md" if page == "README" else page)
            if not target.exists():
                wrong.append(f"{source.relative_to(ROOT)}: {page} does not exist")
            elif section not in headings(target):
                wrong.append(f"{source.relative_to(ROOT)}: {page} has no section {section!r}")
        for match in BARE_POINTER.finditer(text):
            wrong.append(f"{source.relative_to(ROOT)}: {match.group(0)!r} names no section")
    assert found, "the pattern finds the pointers (e.g. in mtl_celeba/data/celeba.py)"
    assert not wrong


def test_the_pointer_pattern_reads_both_forms() -> None:
    text = "(see README, 'Map') and see docs/data.md, 'Real CelebA'; see README."
    assert POINTER.findall(text) == [("README", "Map"), ("docs/data.md", "Real CelebA")]
    assert [m.group(0) for m in BARE_POINTER.finditer(text)] == ["see README"]
    assert slug("Sweeps: mtl-bench --sweep") == "sweeps-mtl-bench---sweep"
    assert slug("FAMO's CelebA-40 protocol") == "famos-celeba-40-protocol"


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_machine_paths(page: Path) -> None:
    hits = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not hits, f"{page.relative_to(ROOT)} names machine-specific paths: {hits}"


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
