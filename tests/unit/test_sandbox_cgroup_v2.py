"""cgroup.py's pure-v2 path (memory.max, pids.max, cgroup.kill, cgroup.events, the sweep) against the fake
cgroupfs double (tests/support/fake_cgroupfs.py says what it emulates and what it cannot prove). This
machine is a hybrid host: `stat -fc %T /sys/fs/cgroup` is tmpfs, memory/pids are v1; cgroup.kill on the
unified v2 mount is exercised for real by every sandbox test."""

from __future__ import annotations

import subprocess
import time

from cardforge.core.sandbox import cgroup
from support.fake_cgroupfs import FakeCgroupFS


def _layout(fs: FakeCgroupFS, monkeypatch) -> cgroup.Layout:
    fs.patch(monkeypatch)
    return cgroup.Layout.detect(cgroup._mounts(), cgroup._own_paths())


def test_a_v2_call_is_limited_killed_waited_for_and_removed(tmp_path, monkeypatch):
    fs = FakeCgroupFS(tmp_path / "cg")
    layout = _layout(fs, monkeypatch)
    assert layout.v2_parent == fs.parent and layout.v2_controllers == {"memory", "pids"} and not layout.v1_parents
    assert layout.describe() == "cgroup v2 cgroup.kill; cgroup v2 memory.max; cgroup v2 pids.max"
    cg = cgroup.CallCgroup(layout, 300 << 20, 7)
    assert cg.v2.name.startswith(f"call-{cgroup.owner_tag()}-")
    assert {f: (cg.v2 / f).read_text() for f in ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max")} \
        == {"memory.max": str(300 << 20), "memory.swap.max": "0", "memory.oom.group": "1", "pids.max": "7"}
    # the call's processes, as the kernel would list them
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    (cg.v2 / "cgroup.procs").write_text("".join(f"{p.pid}\n" for p in procs))
    (cg.v2 / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert not cg.empty()
    with fs.kernel():
        assert cg.wait_empty(5)
    assert fs.killed == [cg.v2]  # ended through cgroup.kill
    assert all(p.wait(5) == -9 for p in procs)
    cg.remove()
    assert cg.dirs == [] and not cg.v2.exists()


def test_a_v2_cgroup_that_stays_populated_is_a_breach(tmp_path, monkeypatch):
    fs = FakeCgroupFS(tmp_path / "cg")
    cg = cgroup.CallCgroup(_layout(fs, monkeypatch), 1 << 20, 4)
    (cg.v2 / "cgroup.events").write_text("populated 1\n")  # no kernel thread: cgroup.kill is never obeyed
    t = time.monotonic()
    assert not cg.wait_empty(0.2) and time.monotonic() - t < 2
    cg.remove()
    assert cg.dirs == [cg.v2]  # still there (EBUSY): kept for the next call's sweep, never forgotten


def test_the_sweep_ends_a_dead_owners_v2_call_and_leaves_live_owners_alone(tmp_path, monkeypatch):
    fs = FakeCgroupFS(tmp_path / "cg")
    layout = _layout(fs, monkeypatch)
    victims = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pid, _, ns = cgroup.owner_tag().split("-")
        dead = fs.add(f"call-4999999-1-{ns}-0123456789", [p.pid for p in victims])  # owner gone
        reused = fs.add(f"call-{pid}-1-{ns}-aaaaaaaaaa", [])  # our pid, another start time
        foreign = fs.add(f"call-4999997-1-{int(ns) + 1}-dddddddddd", [bystander.pid])  # another pid namespace
        live = fs.add(f"call-{cgroup.owner_tag()}-bbbbbbbbbb", [bystander.pid])  # ours, running
        with fs.kernel():
            assert layout.sweep() == []
        assert not dead.exists() and not reused.exists() and live.exists() and foreign.exists()
        assert all(p.wait(5) == -9 for p in victims) and bystander.poll() is None
        # a dead owner's cgroup that cannot be emptied is reported, not ignored
        stuck = fs.add(f"call-4999998-1-{ns}-cccccccccc", [bystander.pid])
        left = layout.sweep(timeout_s=0.2)  # no kernel thread: the kill is not obeyed
        assert len(left) == 1 and str(stuck) in left[0] and "survive" in left[0]
    finally:
        for p in [*victims, bystander]:
            p.kill()
            p.wait()
