"""Keys of the prepared-sample caches: which generator made the samples, from which sources.

RULER's and InfiniteBench's generated samples are cached under ``cache_dir`` (costly at 1M
tokens: tokenising and fitting the haystack). A cached file may be reused only when the same
code would write it again from the same data, so its name carries, besides the task, length,
budget, tokenizer, seed and count:

* :func:`generator_version`: a digest of the source of the modules that generate the samples
  (any change to a template, a generator or the fitting makes new files; no version number to
  remember to bump);
* :func:`corpus_digest`: a digest of the haystack corpus's text (a corpus spec naming a folder
  whose files changed gives new samples);
* :func:`data_digest`: a digest of a local data file (``squad_path``, ``hotpotqa_path``), or the
  hub id when the rows come from the hub.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

__all__ = ["generator_version", "corpus_digest", "data_digest", "samples_key"]

_HERE = Path(__file__).resolve().parent
# the modules whose code decides what a prepared sample of each family contains
_GENERATORS = {"ruler": ("ruler.py", "ruler_spec.py", "ruler_tasks.py", "ruler_qa.py", "haystack.py", "sample.py"),
               "infinitebench": ("infinitebench.py", "infinitebench_synth.py", "haystack.py", "sample.py")}


@lru_cache(maxsize=None)
def generator_version(family: str) -> str:
    h = hashlib.sha256()
    for name in _GENERATORS[family]:
        h.update(name.encode() + b"\0" + (_HERE / name).read_bytes() + b"\0")
    return h.hexdigest()[:12]


@lru_cache(maxsize=16)
def corpus_digest(spec: str) -> str:
    from .haystack import corpus_text

    return hashlib.sha256(corpus_text(spec)[0].encode("utf-8")).hexdigest()[:12]


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    from ..core.fingerprint import file_fingerprint

    return file_fingerprint(path).removeprefix("sha256:")[:12]


def data_digest(local_path: str, hub_id: str) -> str:
    """A local file's content digest (recomputed when its size or time changes), else ``hub:ID``."""
    if not local_path:
        return f"hub:{hub_id}"
    path = Path(local_path)
    try:
        st = path.stat()
    except OSError:
        return f"missing:{local_path}"  # the loader raises the clear error; the key only must differ
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


def samples_key(*parts: str) -> str:
    """One short digest of the parts (a file-name component)."""
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:12]
