# Sourced by the job scripts that start a server on 127.0.0.1 (generate_vllm.sbatch, evaluate.sbatch):
# the port it listens on, chosen when the task starts, so two tasks sharing a node (no --exclusive)
# never serve on, or wait for the health of, the same port.
#
#   pick_port PYTHON     prints $PORT if set (an error if it is in use), else a free port it
#                        reserves for this script (release_port frees it; the scripts' EXIT trap)
#
# A probe alone cannot keep two tasks apart: vLLM binds its port only after minutes of loading,
# and the second task would find the first one's port free and, worse, its health answered by
# the other task's server. So a port is also reserved: a file ${LONGCTX_PORT_LOCKS:-/tmp/longctx-ports}/PORT,
# created exclusively, holding the PID of the job script (a reservation whose process is gone is
# stale and taken over). Where jobs get a private /tmp (SLURM's job_container/tmpfs), the
# reservations do not meet; the candidates then still differ: each task starts at
# 20000 + 97 x SLURM_JOB_ID mod 12000 (every job and array task has its own id). Ports stay below
# 32768, Linux's first ephemeral port, so no client's outgoing connection holds them.
PORT_BASE=20000
PORT_SPAN=12000
PORT_LOCKS=${LONGCTX_PORT_LOCKS:-/tmp/longctx-ports}

pick_port() {
    "$1" - "${PORT:-}" "${SLURM_JOB_ID:-$$}" "$$" "$PORT_BASE" "$PORT_SPAN" "$PORT_LOCKS" <<'PY'
import os
import socket
import sys
from pathlib import Path

given, seed, owner, base, span, locks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), Path(sys.argv[6])


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def reserve(port: int) -> bool:
    lock = locks / str(port)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text() or 0)
            except (OSError, ValueError):
                return False  # being written by another task: not ours
            if holder and alive(holder):
                return False
            lock.unlink(missing_ok=True)  # stale: its job is gone
            continue
        os.write(fd, str(owner).encode())
        os.close(fd)
        return True
    return False


if given:
    if not free(int(given)):
        sys.exit(f"error: PORT={given} is in use on this node (another job's server?): "
                 "leave PORT unset to pick a free one")
    print(given)
    sys.exit(0)
locks.mkdir(parents=True, exist_ok=True, mode=0o1777)
for k in range(span):
    port = base + (97 * seed + k) % span
    if free(port) and reserve(port):
        print(port)
        sys.exit(0)
sys.exit(f"error: no free port in {base}-{base + span - 1} on this node")
PY
}

release_port() {  # release_port PORT: drop this script's reservation, if it holds one
    local lock="$PORT_LOCKS/${1:-}"
    if [ -n "${1:-}" ] && [ -f "$lock" ] && [ "$(cat "$lock" 2>/dev/null)" = "$$" ]; then rm -f "$lock"; fi
}
