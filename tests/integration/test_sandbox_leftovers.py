"""Issue #17 follow-up: what a killed host process leaves is ended by the next call, through run_sandboxed.

A host process killed mid-call (SIGKILL, OOM killer) runs no cleanup: its call cgroups stay, possibly with
live processes in them (anything that left bwrap's namespace teardown behind), and its workspace tmpfs
stays mounted. The next call on the machine, from any host process, ends those processes, removes the
cgroups and unmounts and removes the workspace; a live host's cgroups and workspaces are never touched
(owner = pid + start time in the name, so a reused pid is not mistaken for the owner)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cardforge.core.sandbox import run_sandboxed
from cardforge.core.sandbox.cgroup import Layout, owner_alive, owner_tag

LAYOUT = Layout.probe()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _host(tmp_path: Path, body: str) -> subprocess.Popen:
    script = tmp_path / "host.py"
    script.write_text(body)
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)


@pytest.mark.skipif(not LAYOUT.kill, reason="no writable cgroup here")
def test_live_processes_in_a_dead_hosts_cgroup_are_killed_and_the_cgroup_removed(tmp_path):
    # the host joins a call cgroup exactly as run.py does and starts a process tree there in its own session
    # (so nothing ends it with the host), then is SIGKILLed
    host = _host(tmp_path, (
        "import subprocess, sys, time\n"
        "from cardforge.core.sandbox.cgroup import CallCgroup, Layout\n"
        "from cardforge.core.sandbox.run import _JOIN\n"
        "cg = CallCgroup(Layout.probe(), 256 << 20, 16)\n"
        "p = subprocess.Popen(['/bin/sh', '-c', _JOIN, 'x', *cg.procs_files(), '--', 'setsid', 'sh', '-c',\n"
        "                      'sleep 300 & sleep 300 & wait'], start_new_session=True)\n"
        "time.sleep(0.5)\n"
        "print(' '.join(str(d) for d in cg.dirs), flush=True)\n"
        "time.sleep(300)\n"))
    dirs = [Path(d) for d in host.stdout.readline().split()]
    assert dirs and all(d.is_dir() for d in dirs)
    pids = set()
    for d in dirs:
        pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
    assert len(pids) >= 3 and all(_alive(p) for p in pids)
    host.kill()
    host.wait()
    try:
        r = run_sandboxed(["true"], timeout_s=10)
        assert r.exit_code == 0, r
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), "the dead host's processes still run"
        assert not any(d.exists() for d in dirs), dirs
    finally:
        for p in pids:
            try:
                os.kill(p, 9)
            except OSError:
                pass
        for d in dirs:
            if d.exists():
                d.rmdir()


def test_a_dead_hosts_workspace_is_unmounted_and_removed_by_the_next_call(tmp_path):
    host = _host(tmp_path, (
        "import threading\nfrom cardforge.core.sandbox import run_sandboxed\n"
        "threading.Thread(target=run_sandboxed, args=(['sh', '-c', 'echo x > left.txt; sleep 300'],),\n"
        "                 kwargs={'timeout_s': 300}, daemon=True).start()\n"
        "import time\ntime.sleep(300)\n"))
    prefix = f"cf-sbx-{host.pid}-"
    deadline = time.monotonic() + 20
    found = []
    while not found and time.monotonic() < deadline:
        found = [Path("/tmp") / n for n in os.listdir("/tmp") if n.startswith(prefix)
                 and (Path("/tmp") / n / "left.txt").exists()]
        time.sleep(0.05)
    assert found, "the host's call never started"
    host.kill()
    host.wait()
    time.sleep(0.5)
    assert found[0].exists()  # a killed host runs no cleanup
    run_sandboxed(["true"], timeout_s=10)
    mounts = Path("/proc/self/mounts").read_text()
    assert not found[0].exists() and f" {found[0]} " not in mounts


def test_owner_tags_tell_a_reused_pid_from_the_owner_and_leave_other_namespaces_alone():
    me = owner_tag()
    pid, start, ns = me.split("-")
    assert owner_alive(f"{me}-abcdef") and owner_alive(f"{pid}-abcdef")  # ours; an older name without start time
    assert not owner_alive(f"{pid}-{int(start) + 1}-{ns}-abcdef")  # the same pid, another process: owner gone
    assert not owner_alive(f"4999999-1-{ns}-abcdef") and not owner_alive("4999999-abcdef")
    # a host in another pid namespace (a container sharing the cgroup tree or /tmp): never judged dead here
    assert owner_alive(f"4999999-1-{int(ns) + 1}-abcdef") and owner_alive("notapid-x")
