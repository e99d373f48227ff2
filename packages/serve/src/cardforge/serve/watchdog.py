"""Kill a server's process group when the Python process that started it dies, even by SIGKILL.

Run as: python -m cardforge.serve.watchdog PARENT_PID PGID   (started by `cardforge.serve.process`)

Why a separate process: PR_SET_PDEATHSIG only covers the direct child, fires when the *thread* that forked
it exits (a server started from a worker thread would die early), and does not reach an engine's own
worker processes (vLLM, SGLang). This loop watches the parent's pid and takes down the whole group.
It exits by itself once the group is gone (normal stop) so it never outlives the server.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else: not ours to judge
        return True
    return True


def watch(parent_pid: int, pgid: int, poll_s: float = 0.2, grace_s: float = 3.0) -> None:
    while _alive_group(pgid):
        # reparenting (getppid changes) is the signal that our parent is gone, whatever killed it
        if os.getppid() != parent_pid:
            try:
                os.killpg(pgid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while _alive_group(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive_group(pgid):
                    os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        time.sleep(poll_s)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us cleanly
    watch(int(sys.argv[1]), int(sys.argv[2]))
