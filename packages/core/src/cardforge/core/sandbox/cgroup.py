"""One cgroup per sandboxed call: the whole call's memory and process count, and a kill that reaches
every process of the call, whatever it did to its parents.

What a machine offers decides what applies (`Layout.probe`, once per process):
* cgroup v2 (a `cgroup2` mount: the whole /sys/fs/cgroup, or /sys/fs/cgroup/unified beside v1): a leaf we
  create gives `cgroup.kill` (kernel 5.14+) and `cgroup.events` (populated 0/1), even with no controller;
  with the memory / pids controllers delegated to it also `memory.max` (+ `memory.swap.max` 0) and
  `pids.max`.
* cgroup v1 `memory` / `pids` hierarchies (hybrid or legacy hosts): `memory.limit_in_bytes` (+ memsw) and
  `pids.max` in a child of this process's own cgroup there.
* neither writable (a user on a laptop without delegation): no cgroup; run.py falls back to killing the
  pid namespace's init and the per-process limits (docs/sandbox.md: the budget that applies then).

Memory charged to a call's cgroup: anonymous memory of all its processes, memfds and tmpfs files they
write (its /tmp, /dev/shm and the workspace), page cache it faults in. The host joins the cgroup before
anything of the call runs (run.py starts the command through `sh -c 'echo $$ > cgroup.procs; exec ...'`).
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "cardforge-sandbox"


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of the cgroup mounts this process sees."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) >= 5 and len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
            point = fields[4].replace("\\040", " ")
            out.append((point, rfields[0], set(rfields[2].split(","))))
    return out


def _own_paths() -> dict[str, str]:
    """hierarchy key ("" for v2, else a v1 controller name) -> this process's cgroup path in it."""
    paths = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    except (OSError, ValueError):
        pass
    return paths


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Layout:
    """Where this process can create per-call cgroups, and which limits those will carry."""
    v2_parent: Path | None = None  # a v2 directory we may create leaves in (cgroup.kill, events)
    v2_controllers: frozenset[str] = frozenset()  # of memory, pids: enabled for leaves of v2_parent
    v1_parents: dict[str, Path] = field(default_factory=dict)  # "memory"/"pids" -> a v1 directory

    @property
    def memory(self) -> str | None:
        if "memory" in self.v2_controllers:
            return "cgroup v2 memory.max"
        return "cgroup v1 memory.limit_in_bytes" if "memory" in self.v1_parents else None

    @property
    def pids(self) -> str | None:
        if "pids" in self.v2_controllers:
            return "cgroup v2 pids.max"
        return "cgroup v1 pids.max" if "pids" in self.v1_parents else None

    @property
    def kill(self) -> str | None:
        return "cgroup v2 cgroup.kill" if self.v2_parent else ("cgroup v1 procs" if self.v1_parents else None)

    def describe(self) -> str:
        if not (self.v2_parent or self.v1_parents):
            return "no cgroup (not writable here): pid-namespace kill, per-process limits only"
        return "; ".join(x for x in (self.kill, self.memory, self.pids) if x)

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def probe() -> Layout:
        if os.environ.get("CARDFORGE_SANDBOX_NO_CGROUP"):  # tests of the fallback path
            return Layout()
        layout = Layout.detect(_mounts(), _own_paths())
        layout.sweep()
        return layout

    @staticmethod
    def detect(mounts: list[tuple[str, str, set[str]]], own: dict[str, str]) -> Layout:
        """The layout the cgroup mounts `mounts` (as _mounts gives them) and this process's own cgroups
        `own` (as _own_paths) allow; creates the v2 parent directory where it may."""
        v2_parent, v2_ctrls = None, frozenset()
        for point, fstype, _ in mounts:
            if fstype != "cgroup2" or v2_parent:
                continue
            for base in dict.fromkeys([own.get("", "/"), "/"]):  # under our own cgroup first, then the root
                parent = Path(point + base.rstrip("/")) / PREFIX
                try:
                    if not (parent / "cgroup.procs").exists():
                        try:
                            parent.mkdir(exist_ok=True)
                        except OSError:
                            continue
                    if not (parent / "cgroup.kill").exists():  # kernel < 5.14: no cgroup.kill
                        continue
                    # a child's cgroup.controllers = its parent's subtree_control: delegate what the parent
                    # has (fails with EBUSY where the parent holds processes and is not the root: then only
                    # the kill applies there, and the root is tried next)
                    up = parent.parent
                    want = set((up / "cgroup.controllers").read_text().split()) & {"memory", "pids"}
                    missing = want - set((up / "cgroup.subtree_control").read_text().split())
                    if missing:
                        _write(up / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
                    avail = set((parent / "cgroup.controllers").read_text().split()) & {"memory", "pids"}
                    have = set((parent / "cgroup.subtree_control").read_text().split())
                    for c in sorted(avail - have):  # parent holds no process: delegating to its leaves is allowed
                        _write(parent / "cgroup.subtree_control", f"+{c}")
                    enabled = set((parent / "cgroup.subtree_control").read_text().split()) & {"memory", "pids"}
                except OSError:
                    continue
                if v2_parent is None or enabled > v2_ctrls:
                    v2_parent, v2_ctrls = parent, frozenset(enabled)
                if {"memory", "pids"} <= enabled:
                    break
        v1 = {}
        for ctrl in ("memory", "pids"):
            if ctrl in v2_ctrls:
                continue
            for point, fstype, opts in mounts:
                if fstype == "cgroup" and ctrl in opts and ctrl in own:
                    parent = Path(point + own[ctrl].rstrip("/"))
                    probe = parent / f"{PREFIX}-probe-{os.getpid()}"
                    try:
                        probe.mkdir()
                        ok = (probe / ("memory.limit_in_bytes" if ctrl == "memory" else "pids.max")).exists()
                        probe.rmdir()
                    except OSError:
                        ok = False
                    if ok:
                        v1[ctrl] = parent
                    break
        return Layout(v2_parent, v2_ctrls, v1)

    def sweep(self, timeout_s: float = 5.0) -> list[str]:
        """End and remove the cgroups of calls whose host process is gone (killed mid-call: its call's
        processes may still run there, e.g. a daemon that escaped bwrap's --die-with-parent). Run before
        every call. A cgroup is stale when its owner (the pid and start time in its name) no longer runs;
        a live host's cgroups are never touched. Returns what could not be ended or removed (run.py
        raises SandboxBreach on it: processes of a call that nobody can end)."""
        parents = [(self.v2_parent, "call-")] if self.v2_parent else []
        parents += [(p, f"{PREFIX}-call-") for p in self.v1_parents.values()]
        stale = []
        for parent, prefix in parents:
            try:
                children = [c for c in parent.iterdir() if c.name.startswith(prefix)]
            except OSError:
                continue
            stale += [c for c in children if not owner_alive(c.name[len(prefix):])]
        if not stale:
            return []
        left = []
        cgs = [_Stale(d, d.parent == self.v2_parent) for d in stale]
        deadline = time.monotonic() + timeout_s
        for cg in cgs:
            if not cg.wait_empty(max(deadline - time.monotonic(), 0.0)):
                left.append(f"{cg.dir}: processes {sorted(cg.pids())[:10]} survive SIGKILL")
                continue
            cg.remove()
            if cg.dirs:
                left.append(f"{cg.dir}: empty but cannot be removed")
        return left


class CallCgroup:
    """The cgroups of one call: made, limited, joined by the command's first process, killed, removed."""

    def __init__(self, layout: Layout, mem_bytes: int, max_procs: int):
        self.layout, self.dirs = layout, []
        name = f"call-{owner_tag()}-{uuid.uuid4().hex[:10]}"
        self.v2 = None
        try:
            if layout.v2_parent:
                self.v2 = layout.v2_parent / name
                self.v2.mkdir()
                self.dirs.append(self.v2)
                if "memory" in layout.v2_controllers:
                    (self.v2 / "memory.max").write_text(str(mem_bytes))
                    _write(self.v2 / "memory.swap.max", "0")
                    _write(self.v2 / "memory.oom.group", "1")  # an OOM kill ends the whole call
                if "pids" in layout.v2_controllers:
                    (self.v2 / "pids.max").write_text(str(max_procs))
            self.v1 = {}
            for ctrl, parent in layout.v1_parents.items():
                d = parent / f"{PREFIX}-{name}"
                d.mkdir()
                self.dirs.append(d)
                self.v1[ctrl] = d
                if ctrl == "memory":
                    (d / "memory.limit_in_bytes").write_text(str(mem_bytes))
                    _write(d / "memory.memsw.limit_in_bytes", str(mem_bytes))  # no swap either
                else:
                    (d / "pids.max").write_text(str(max_procs))
        except OSError:
            self.remove()
            raise

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        found = set()
        for d in self.dirs:
            try:
                found |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found

    def empty(self) -> bool:
        if self.v2 is not None:
            try:
                if "populated 1" in (self.v2 / "cgroup.events").read_text():
                    return False
            except OSError:
                pass
        return not self.pids()

    def kill(self) -> None:
        if self.v2 is not None:
            _write(self.v2 / "cgroup.kill", "1")
        for pid in self.pids():  # v1 only, or a leftover: one by one (the pid namespace kill does the rest)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def wait_empty(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.empty():
                return True
            if time.monotonic() > deadline:
                return False
            self.kill()
            time.sleep(0.005)

    def oom_killed(self) -> bool:
        """True when the kernel killed a process of this call for exceeding its memory limit."""
        for d in self.dirs:
            for fname, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    for line in (d / fname).read_text().splitlines():
                        k, _, v = line.partition(" ")
                        if k == key and int(v) > 0:
                            return True
                except (OSError, ValueError):
                    pass
        return False

    def remove(self) -> None:
        left = []
        for d in reversed(self.dirs):
            for _ in range(50):  # rmdir fails with EBUSY until the last task is fully gone
                try:
                    _rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                left.append(d)
        self.dirs = left  # what is still there: the next call's sweep tries again


class _Stale(CallCgroup):
    """A call cgroup found by the sweep (v2 when under the v2 parent, else v1): ended and removed like ours."""

    def __init__(self, d: Path, v2: bool):  # noqa: D107 - not CallCgroup's: nothing is created
        self.dir, self.dirs, self.v2 = d, [d], d if v2 else None


def _rmdir(path: Path) -> None:  # a seam for tests/support/fake_cgroupfs.py (a real cgroupfs lets rmdir go with
    os.rmdir(path)                # its interface files in place; a stand-in directory cannot)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): a pid plus its start
    time names one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_ns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


@functools.lru_cache(maxsize=None)
def _own_tag(pid: int) -> str:
    return f"{pid}-{_start_time(pid) or 0}-{_pid_ns()}"


def owner_tag() -> str:
    """`PID-STARTTIME-PIDNS` of this process: in every call cgroup's (and workspace's) name, so a sweep can
    tell a dead owner from a live one whose pid was merely reused, and never judges (nor kills) the calls
    of a host process in another pid namespace (a container sharing the cgroup tree or /tmp), whose pids
    mean nothing here."""
    return _own_tag(os.getpid())


def owner_alive(tag: str) -> bool:
    """Whether the host process named by `tag` (`PID-STARTTIME-PIDNS-...`; older names `PID-...`) may still
    run: True unless it is provably gone (a pid of our namespace that no longer runs, or runs with another
    start time)."""
    parts = tag.split("-")
    if not parts[0].isdigit():
        return True  # not one of ours: leave it
    if len(parts) >= 4 and parts[1].isdigit() and parts[2].isdigit():
        if int(parts[2]) != _pid_ns():
            return True  # another pid namespace's host: not ours to judge
        return _start_time(int(parts[0])) == parts[1]
    # an older name (PID-...): its namespace is unknown; gone only if no process has that pid here
    return _start_time(int(parts[0])) is not None
