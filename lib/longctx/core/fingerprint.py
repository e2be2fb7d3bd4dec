"""Which weights answered: a content digest of a served checkpoint, the key of the answer cache.

A retrained checkpoint is usually served under the same name as the last one (``ours-1m``), so
the served name cannot key the evaluation's answers. :func:`folder_fingerprint` digests every file
of an export (weights, config, tokenizer, chat template, generation config): stage 3 writes it into
``hf/longctx_fingerprint.json`` when it exports (:func:`write_fingerprint`), and the file records
each file's size and modification time so that a folder changed afterwards is digested again
instead of trusted. :func:`file_fingerprint` does the same for one file (a GGUF). No torch here:
the evaluation client runs from the base install.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["FINGERPRINT_FILE", "folder_fingerprint", "file_fingerprint", "write_fingerprint"]

FINGERPRINT_FILE = "longctx_fingerprint.json"
_CHUNK = 1 << 22


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != FINGERPRINT_FILE
                  and not p.name.startswith("."))


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _combine(digests: dict[str, str]) -> str:
    h = hashlib.sha256(json.dumps(digests, sort_keys=True).encode("utf-8"))
    return "sha256:" + h.hexdigest()


def write_fingerprint(folder: str | Path) -> str:
    """Digest every file of ``folder`` and write :data:`FINGERPRINT_FILE` there; returns the digest."""
    folder = Path(folder)
    files = _files(folder)
    digests = {p.name: _sha256(p) for p in files}
    record = {"fingerprint": _combine(digests), "files": {p.name: [digests[p.name], *_stamp(p)] for p in files}}
    tmp = folder / (FINGERPRINT_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / FINGERPRINT_FILE)
    return record["fingerprint"]


def folder_fingerprint(folder: str | Path) -> str:
    """The digest of a checkpoint folder: from its :data:`FINGERPRINT_FILE` while every file still
    has the recorded size and time, else computed (and not written: the folder may be read-only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder")
    files = _files(folder)
    try:
        record = json.loads((folder / FINGERPRINT_FILE).read_text(encoding="utf-8"))
        recorded = record["files"]
        if sorted(recorded) == [p.name for p in files] and all(recorded[p.name][1:] == _stamp(p) for p in files):
            return str(record["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    return _combine({p.name: _sha256(p) for p in files})


def file_fingerprint(path: str | Path) -> str:
    """The digest of one weights file (a GGUF served by llama.cpp)."""
    return "sha256:" + _sha256(Path(path))
