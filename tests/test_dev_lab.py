"""`./dev lab` starts JupyterLab as root (containers, cloud images) and as a normal user.

The test runs the real command, waits until the server answers its REST API with the project's
notebooks and kernel, then stops it. Waiting is bounded by readiness, not by a time budget that a
busy machine could miss: the limit is generous and only there so a broken start cannot hang CI.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "longctx-test-token"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="./dev needs bash")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.load(response)


def _start_lab(tmp_path: Path, user: str | None):
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    os.chmod(home, 0o777)  # mkdir's mode is filtered by the umask
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_CONFIG_DIR=str(home / "config"))
    cmd = [str(ROOT / "dev"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={TOKEN}", "--ServerApp.port_retries=0"]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", "env", *[f"{k}={v}" for k, v in env.items()], *cmd]
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, port, tmp_path / "lab.log"


def _wait_ready(proc, port: int, log: Path, limit_s: float = 600.0) -> dict:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if proc.poll() is not None:
            pytest.fail(f"./dev lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return _get(port, "/api/status")
        except OSError:
            time.sleep(1.0)
    pytest.fail(f"./dev lab did not answer within {limit_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _check_serves_project(port: int) -> None:
    names = {item["name"] for item in _get(port, "/api/contents/notebooks")["content"]}
    assert "01_generate_qa.ipynb" in names
    assert "longctx" in _get(port, "/api/kernelspecs")["kernelspecs"]


@pytest.mark.slow
def test_dev_lab_starts_as_the_current_user(tmp_path):
    """As root this is the case Jupyter refuses without --allow-root."""
    proc, port, log = _start_lab(tmp_path, user=None)
    try:
        _wait_ready(proc, port, log)
        _check_serves_project(port)
    finally:
        _stop(proc)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None,
                    reason="starting as another user needs root and runuser")
def test_dev_lab_starts_as_a_normal_user(tmp_path):
    """The same command as an unprivileged user (no --allow-root passed, none needed)."""
    user = "nobody"
    pwd.getpwnam(user)
    # The clone must be readable by that user; a root-only checkout would be the test's fault.
    for parent in [ROOT, *ROOT.parents]:
        if not os.stat(parent).st_mode & 0o005:
            pytest.skip(f"{parent} is not readable by other users")
    probe = subprocess.run(["runuser", "-u", user, "--", str(ROOT / ".venv" / "bin" / "python"), "-c", "0"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the .venv interpreter is not usable by {user}: {probe.stderr.strip()[-200:]}")
    proc, port, log = _start_lab(tmp_path, user=user)
    try:
        _wait_ready(proc, port, log)
        _check_serves_project(port)
        assert "--allow-root" not in log.read_text()
    finally:
        _stop(proc)
