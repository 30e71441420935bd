"""The repository explains its own theory: every citation of docs/theory.md names a section that exists, and nothing
cites the team's notes outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
CITATION = re.compile(r"theory\.md#([A-Za-z0-9_-]+)")
OUTSIDE = re.compile(r"shared/reference|reference §|dynamics\.md")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".json", ".yml", ".yaml", ".toml", ".cff"))
            and (ROOT / n).is_file()]


def test_every_cited_theory_section_exists():
    anchors = set(re.findall(r'<a id="([A-Za-z0-9_-]+)"></a>', THEORY.read_text()))
    missing = sorted({(path.relative_to(ROOT).as_posix(), anchor) for path in tracked_text_files()
                      for anchor in CITATION.findall(path.read_text(errors="replace")) if anchor not in anchors})
    assert not missing


@pytest.mark.parametrize("path", ["service", "tests", "examples", "client", "bench", "docs", "openapi", "README.md"])
def test_nothing_cites_notes_outside_the_repository(path):
    me = Path(__file__).resolve()
    found = [p.relative_to(ROOT).as_posix() for p in tracked_text_files()
             if p.relative_to(ROOT).as_posix().startswith(path) and p != me
             and OUTSIDE.search(p.read_text(errors="replace"))]
    assert not found


def test_every_source_of_the_theory_has_a_doi_or_says_it_has_none():
    sources = THEORY.read_text().split('<a id="sources"></a>', 1)[1]
    entries = [e for e in re.split(r"\n\* ", sources) if e.strip() and not e.strip().startswith("##")]
    assert entries
    assert all("doi:10." in e or "no DOI" in e for e in entries)
