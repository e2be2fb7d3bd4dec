"""The embedded default corpus: Jane Austen's six novels, available offline.

The texts (public domain) ship in Debian's ``r-cran-janeaustenr`` package (MIT) as an R lazy-load
database. We read it without R: ``apt-get download`` fetches the .deb (no root needed once the
package lists exist), Python unpacks the ``ar``/``tar`` archive, and the pure-Python ``rdata``
package decodes the R objects (one character vector of lines per novel). Lines are re-flowed
into paragraphs separated by blank lines and written to ``data/austen/<id>.txt`` (ignored by
git). ``python -m longctx.generate.austen`` does this once; :func:`load_austen` does it on first use.
"""

from __future__ import annotations

import io
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..core.config import project_root

__all__ = ["NOVELS", "AustenUnavailable", "austen_dir", "fetch_austen", "load_austen"]

# id in the R package -> title, in publication order
NOVELS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
DEB_PACKAGE = "r-cran-janeaustenr"
_RDB_IN_PACKAGE = "usr/lib/R/site-library/janeaustenr/data/Rdata"
_INSTALLED_R_LIBRARY = Path("/usr/lib/R/site-library/janeaustenr/data/Rdata")


class AustenUnavailable(RuntimeError):
    """The novels are not on disk and this machine has no ``apt-get`` to fetch them (not Debian)."""


def austen_dir() -> Path:
    """Where the extracted novels live: ``<project root>/data/austen``."""
    return project_root() / "data" / "austen"


def _reflow(lines: list[str]) -> str:
    """R's one-line-per-row text -> paragraphs joined by a blank line."""
    paragraphs, current = [], []
    for line in lines:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs) + "\n"


def _read_lazyload_db(rdx: bytes, rdb: bytes) -> dict[str, list[str]]:
    """Decode an R lazy-load database (index ``.rdx`` + blobs ``.rdb``) of character vectors."""
    import warnings

    import rdata

    def parse(blob: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns that the stream has no file header
            return rdata.conversion.convert(rdata.parser.parse_data(blob))

    index = parse(rdx)  # an RDS stream; rdata detects its compression
    out = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[offset:offset + length]
        (expected,) = struct.unpack(">I", blob[:4])
        data = zlib.decompress(blob[4:])
        if len(data) != expected:
            raise ValueError(f"janeaustenr database: object {name} is {len(data)} bytes, expected {expected}")
        out[str(name)] = [str(x) for x in parse(data)]
    return out


def _extract_from_deb(deb: Path) -> tuple[bytes, bytes]:
    """The ``Rdata.rdx`` / ``Rdata.rdb`` members of a .deb (an ``ar`` archive holding a tar)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not a Debian package (no ar header)")
    pos = 8
    while pos < len(raw):
        name = raw[pos:pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".zst"):
                raise RuntimeError(f"{deb}: zstd-compressed data; install 'zstandard' or use dpkg-deb")
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                members = {m.name.lstrip("./"): m for m in tar.getmembers()}
                return (tar.extractfile(members[_RDB_IN_PACKAGE + ".rdx"]).read(),
                        tar.extractfile(members[_RDB_IN_PACKAGE + ".rdb"]).read())
    raise ValueError(f"{deb}: no data.tar member")


def _download_deb(workdir: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise AustenUnavailable(
            "the embedded Austen corpus comes from Debian's r-cran-janeaustenr package, but apt-get "
            "is not available on this machine. Either run on a Debian/Ubuntu machine, copy the "
            f"novels as .txt files into {austen_dir()}, or set corpus to your own texts.")
    cmd = ["apt-get", "download", DEB_PACKAGE]
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0 and "Unable to locate" in result.stderr and os.geteuid() == 0:
        # A fresh machine may have no package lists yet; as root we can fetch them.
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        hint = ("run 'apt-get update' (as root) first" if "Unable to locate" in result.stderr
                else "check that Debian's package archive is reachable")
        raise RuntimeError(f"'{' '.join(cmd)}' failed ({hint}):\n{result.stderr.strip()}")
    debs = sorted(workdir.glob(f"{DEB_PACKAGE}_*.deb"))
    if not debs:
        raise RuntimeError(f"'{' '.join(cmd)}' reported success but wrote no .deb in {workdir}")
    return debs[-1]


def fetch_austen(target: Path | None = None) -> Path:
    """Extract the six novels to ``target`` (default :func:`austen_dir`) unless already there."""
    target = target or austen_dir()
    if all((target / f"{k}.txt").is_file() for k in NOVELS):
        return target
    if _INSTALLED_R_LIBRARY.with_suffix(".rdx").is_file():
        rdx = _INSTALLED_R_LIBRARY.with_suffix(".rdx").read_bytes()
        rdb = _INSTALLED_R_LIBRARY.with_suffix(".rdb").read_bytes()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rdx, rdb = _extract_from_deb(_download_deb(Path(tmp)))
    novels = _read_lazyload_db(rdx, rdb)
    missing = sorted(set(NOVELS) - set(novels))
    if missing:
        raise RuntimeError(f"janeaustenr database lacks {missing}; found {sorted(novels)}")
    target.mkdir(parents=True, exist_ok=True)
    for key in NOVELS:
        tmp_path = target / f".{key}.txt.tmp"
        tmp_path.write_text(_reflow(novels[key]), encoding="utf-8")
        tmp_path.replace(target / f"{key}.txt")  # atomic: a half-written novel never looks done
    return target


def load_austen() -> list[tuple[str, str, str]]:
    """``(id, title, text)`` for the six novels in publication order, fetching them if needed."""
    folder = fetch_austen()
    return [(key, title, (folder / f"{key}.txt").read_text(encoding="utf-8"))
            for key, title in NOVELS.items()]


if __name__ == "__main__":
    where = fetch_austen()
    print(f"Jane Austen's novels are in {where}", file=sys.stderr)
