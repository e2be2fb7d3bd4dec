"""Make a child process die with its parent, even when the parent is SIGKILLed.

An orphaned llama.cpp server keeps its cores and its port busy until someone notices. Two
mechanisms, because neither is enough alone:

* Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills us the moment the parent dies.
  (It fires when the parent *thread* that forked us exits, so start the server from a thread
  that lives as long as the run: the main thread.)
* A watchdog thread polling ``getppid()``: works on every POSIX system, and also covers the
  race where the parent died before ``prctl`` ran (we were reparented already).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return False
    return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> bool:
    """Arrange for this process to exit when ``parent_pid`` is gone; returns whether prctl worked.

    Exits at once if the parent is already gone. The watchdog uses ``os._exit`` because the
    server's own threads would keep a normal interpreter shutdown waiting.
    """
    armed = _set_pdeathsig()
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    return armed
