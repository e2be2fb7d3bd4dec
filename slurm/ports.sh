# Sourced by the job scripts that start a server on 127.0.0.1 (generate_vllm.sbatch, evaluate.sbatch):
# the port it listens on, chosen when the task starts, so two tasks sharing a node (no --exclusive)
# never serve on, or wait for the health of, the same port.
#
#   pick_port PYTHON     prints $PORT if set (an error if it is in use), else the first free port at
#                        or after 20000 + SLURM_JOB_ID mod 12000
#
# SLURM gives every job and every array task its own SLURM_JOB_ID, so tasks that start together
# probe different ports (a probe alone could not tell two tasks apart: vLLM binds its port only
# after minutes of loading). Ports stay below 32768, Linux's first ephemeral port, so no
# client's outgoing connection holds them. After the health wait the script checks that its own
# server is still alive, so another process answering on the port is never mistaken for it.
PORT_BASE=20000
PORT_SPAN=12000

pick_port() {
    "$1" - "${PORT:-}" "${SLURM_JOB_ID:-$$}" "$PORT_BASE" "$PORT_SPAN" <<'PY'
import socket
import sys

given, seed, base, span = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if given:
    if not free(int(given)):
        sys.exit(f"error: PORT={given} is in use on this node (another job's server?): "
                 "leave PORT unset to pick a free one")
    print(given)
    sys.exit(0)
for k in range(span):
    port = base + (seed + k) % span
    if free(port):
        print(port)
        sys.exit(0)
sys.exit(f"error: no free port in {base}-{base + span - 1} on this node")
PY
}
