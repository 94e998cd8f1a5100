"""The README and docs/ stand alone: every file they link to or name is in the repository, none outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)")  # a Markdown link or image to a local file
UPWARD = re.compile(r"(?<![\w.])\.\./[\w./-]+")  # a path out of the repository's folder, linked or not


def outside_or_missing(document: Path, text: str) -> list[str]:
    """The files `text` (of `document`) links to that are not in the repository, and the paths it names that lead
    out of it (a clone has nothing there)."""
    missing = [target for target in LINK.findall(text)
               if not (document.parent / target).resolve().is_relative_to(ROOT)
               or not (document.parent / target).exists()]
    return sorted(set(missing + UPWARD.findall(text)))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_documents_name_only_files_of_the_repository(document: Path) -> None:
    assert outside_or_missing(document, document.read_text()) == []


def test_a_link_outside_the_repository_is_found() -> None:
    readme = ROOT / "README.md"
    assert outside_or_missing(readme, "[the API notes](../notes/amojo-api.md), `../notes/DESIGN.md`, "
                                      "[gone](docs/gone.md)") == [
        "../notes/DESIGN.md", "../notes/amojo-api.md", "docs/gone.md"]
