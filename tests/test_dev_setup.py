"""``./dev setup`` beyond Debian: without ``apt-get`` the Austen step warns and set-up succeeds;
with ``apt-get`` (Debian, CI) a failure to fetch the novels still fails set-up.

The real ``dev`` script runs in a scratch copy of the project (``pyproject.toml``, an empty
``params/``, no ``data/``), whose ``.venv`` is this interpreter and whose install stamp is already
there, so only the Austen step runs. PATH holds every command of this machine except ``apt-get``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scratch_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "params").mkdir(parents=True)
    shutil.copy(ROOT / "dev", project / "dev")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    venv_bin = project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv_bin / "python").chmod(0o755)
    extras = re.search(r'local extras="([^"]+)"', (ROOT / "dev").read_text()).group(1)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (project / ".venv" / f".longctx-setup-{digest}-{extras.replace(',', '_')}").touch()   # installed already
    return project


def _path_without_apt(tmp_path: Path, fake_apt: str | None = None) -> str:
    """A PATH with a link to every command of this machine's PATH except apt-get (and, when
    given, a fake apt-get)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = Path(folder) / name
            if name.startswith("apt") or (bin_dir / name).exists() or not os.access(target, os.X_OK):
                continue
            (bin_dir / name).symlink_to(target)
    if fake_apt is not None:
        (bin_dir / "apt-get").write_text(fake_apt)
        (bin_dir / "apt-get").chmod(0o755)
    return str(bin_dir)


def _setup(project: Path, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT / "lib")}
    return subprocess.run(["bash", str(project / "dev"), "setup"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(Path("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx").is_file(),
                    reason="R's janeaustenr is installed here: the novels need no apt-get")
def test_setup_without_apt_get_warns_and_succeeds(tmp_path):
    project = _scratch_project(tmp_path)
    result = _setup(project, _path_without_apt(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "apt-get is not available on this machine" in result.stderr          # why (longctx.generate.austen)
    assert "warning: Austen's novels are not set up (no apt-get here)" in result.stderr
    assert not (project / "data" / "austen").exists()


def test_setup_with_a_failing_apt_get_still_fails(tmp_path):
    """On Debian (CI) the novels must be there: a fetch that fails stops set-up."""
    project = _scratch_project(tmp_path)
    broken = "#!/bin/sh\necho 'E: Failed to fetch (test: no archive)' >&2\nexit 100\n"
    result = _setup(project, _path_without_apt(tmp_path, fake_apt=broken))
    assert result.returncode != 0
    assert "apt-get download r-cran-janeaustenr' failed" in result.stderr
    assert "warning: Austen's novels are not set up" not in result.stderr
