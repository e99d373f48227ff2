"""A stand-in cgroup v2 filesystem in a plain directory: a documented test double for cgroup.py's v2 path.

Why: the machines these tests run on bind the memory and pids controllers to cgroup v1 (a hybrid host: the
cgroup2 mount at /sys/fs/cgroup/unified has cgroup.kill and cgroup.events but no memory/pids controllers),
so `memory.max`, `memory.swap.max`, `memory.oom.group`, `pids.max` and a v2 sweep never run for real
here. This double lets the v2 logic run against the files a v2 kernel would offer.

What it emulates (and nothing more):
* a cgroup2 mount at `root`, controllers `memory pids` delegated to the `cardforge-sandbox` parent;
* `cgroup.procs` / `cgroup.events` ("populated 0|1") of cgroups the test makes with `add`, listing REAL
  processes the test started (so a kill is observable);
* the kernel's reaction to `echo 1 > cgroup.kill` (`tick`, run in a thread by `kernel()`): SIGKILL every
  listed process, then mark the cgroup unpopulated and empty;
* rmdir: EBUSY while populated, else the directory goes with its interface files (`rmdir`, patched over
  cgroup._rmdir).

What it does NOT prove: that a real v2 kernel accepts these writes (delegation, EBUSY on subtree_control,
memory.max rounding), charges memory or enforces the limits; docs/sandbox.md lists that as never run here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from pathlib import Path

from cardforge.core.sandbox import cgroup

IFACE = ("cgroup.procs", "cgroup.events", "cgroup.kill", "cgroup.controllers", "cgroup.subtree_control")


class FakeCgroupFS:
    def __init__(self, root: Path):
        self.root = root
        self.parent = root / cgroup.PREFIX
        self.parent.mkdir(parents=True)
        for d in (root, self.parent):
            (d / "cgroup.controllers").write_text("cpu memory pids\n")
            (d / "cgroup.subtree_control").write_text("memory pids\n")
            (d / "cgroup.procs").write_text("")
            (d / "cgroup.kill").write_text("")
        self.killed: list[Path] = []  # cgroups whose cgroup.kill the code under test wrote

    def patch(self, monkeypatch) -> None:
        monkeypatch.setattr(cgroup, "_mounts", lambda: [(str(self.root), "cgroup2", set())])
        monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": "/"})
        monkeypatch.setattr(cgroup, "_rmdir", self.rmdir)

    def add(self, name: str, pids: list[int]) -> Path:
        d = self.parent / name
        d.mkdir()
        (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        (d / "cgroup.events").write_text(f"populated {int(bool(pids))}\nfrozen 0\n")
        (d / "cgroup.kill").write_text("")
        return d

    def tick(self) -> None:
        for d in self.parent.iterdir():
            kill = d / "cgroup.kill"
            if not d.is_dir() or not kill.exists() or kill.read_text().strip() != "1":
                continue
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
            (d / "cgroup.procs").write_text("")
            (d / "cgroup.events").write_text("populated 0\nfrozen 0\n")
            kill.write_text("")
            self.killed.append(d)

    @contextlib.contextmanager
    def kernel(self):
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                self.tick()
                time.sleep(0.005)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()

    def rmdir(self, path: Path) -> None:
        events = path / "cgroup.events"
        procs = path / "cgroup.procs"
        if (events.exists() and "populated 1" in events.read_text()) or (procs.exists() and procs.read_text().strip()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        for f in path.iterdir():
            f.unlink()
        os.rmdir(path)
