"""One host uid per running call, leased from a pool, so no kernel counter is shared between calls.

Several kernel limits are counted per HOST uid, whatever the namespaces: pipe buffer pages
(fs.pipe-user-pages-soft: past it, F_SETPIPE_SZ is refused and new pipes shrink to 2 pages), epoll
watches (fs.epoll.max_user_watches), inotify instances, POSIX message-queue bytes, pending signals at the
host level, processes (RLIMIT_NPROC at the host level). When every sandbox ran as 65534, one call could
use them up for all the others (issue #17 follow-up: a call holding 63 pipes of 1 MiB made a concurrent
call's F_SETPIPE_SZ fail with EPERM). Now each call runs as its own uid from
[UID_BASE, UID_BASE + UID_SLOTS): the counters are per call.

The lease is an exclusive flock on `<lock dir>/<slot>.lock`, held for the whole call (until its processes
are verified gone and its workspace removed); the kernel releases it if the host process dies, and the
next call's sweep (cgroup.py) ends what that host left running before any uid is leased again.

UID_BASE (default 1_900_000_000, env CARDFORGE_SANDBOX_UID_BASE): above systemd-nspawn's container range
(524288-1879048191), below 2^31 and systemd's foreign-uid range; no account has these uids, so no file on
the host belongs to them. Only root leases (it is root that drops to the uid); a non-root user's calls run
as that user (docs/sandbox.md).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path

UID_BASE = int(os.environ.get("CARDFORGE_SANDBOX_UID_BASE", "1900000000"))
UID_SLOTS = 1024


class PoolExhausted(RuntimeError):
    """More calls at once than UID_SLOTS."""


def _lock_dir() -> Path:
    for d in (Path("/run/cardforge-sandbox"), Path(tempfile.gettempdir()) / f"cardforge-sandbox-uids-{os.geteuid()}"):
        try:
            d.mkdir(mode=0o700, exist_ok=True)
            st = d.lstat()
            if st.st_uid == os.geteuid() and not (st.st_mode & 0o077) and d.is_dir() and not d.is_symlink():
                return d
        except OSError:
            continue
    raise PoolExhausted("no private directory for the sandbox uid locks (/run/cardforge-sandbox or under /tmp)")


_next = 0
_next_lock = threading.Lock()


class UidLease:
    """`with UidLease() as uid:` a uid no other running call has. Without root: this process's own uid."""

    def __init__(self):
        self.uid, self.fd = os.geteuid(), None
        if os.geteuid() != 0:
            return
        global _next
        with _next_lock:  # round-robin start: a just-released uid is the last to be reused
            start = _next
            _next = (_next + 1) % UID_SLOTS
        d = _lock_dir()
        for i in range(UID_SLOTS):
            slot = (start + i) % UID_SLOTS
            fd = os.open(d / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self.fd = UID_BASE + slot, fd
            return
        raise PoolExhausted(f"all {UID_SLOTS} sandbox uids are in use (more calls at once than that?)")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> int:
        return self.uid

    def __exit__(self, *exc) -> None:
        self.release()


def in_pool(uid: int) -> bool:
    return UID_BASE <= uid < UID_BASE + UID_SLOTS
