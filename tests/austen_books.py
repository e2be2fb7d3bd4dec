"""The opening pages of Jane Austen's novels (``fixtures/austen_openings.json``) as a folder corpus
of ``.txt`` files, the shape stage 1 reads from a user's own books (shared by the stage-1 tests)."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "austen_openings.json"


def write_openings(folder: Path, n: int) -> Path:
    """The first ``n`` openings as ``<i>_<id>.txt`` in ``folder`` (made if missing); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(json.loads(FIXTURE.read_text())["documents"][:n]):
        (folder / f"{i}_{doc['id']}.txt").write_text(doc["text"])
    return folder
