"""Issue #17 follow-up: one call cannot affect another that runs at the same time.

Two real sandbox calls side by side: the hog takes every per-uid kernel resource it can (pipe buffer
pages up to fs.pipe-user-pages-soft, queued signals up to its RLIMIT_SIGPENDING), fills its /tmp and
/dev/shm, signals every process it can address (`kill -9 -1`, pids 2..4000) and looks for the other
call's workspace (mountinfo gives its host path; /proc/*/cwd and /proc/*/root of what it can see). The
victim, started meanwhile, must find its own pipes, signals, /tmp and processes intact. Before each call
had a uid of its own (uids.py), the victim's F_SETPIPE_SZ failed with EPERM here."""

from __future__ import annotations

import os
import threading
import time

import pytest
from cardforge.core.sandbox import SandboxUnavailable, check_available, run_sandboxed
from cardforge.core.sandbox.uids import in_pool

try:
    check_available()
except SandboxUnavailable as e:  # pragma: no cover
    pytest.skip(str(e), allow_module_level=True)

HOG = r'''
import ctypes, fcntl, os, re, signal, time
print("uid", os.getuid(), flush=True)
pipes = []
for i in range(120):
    try:
        r, w = os.pipe()
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        pipes.append((r, w))
    except OSError:
        break
for extra in range(40):  # default-sized ones past the soft limit
    try:
        pipes.append(os.pipe())
    except OSError:
        break
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
libc = ctypes.CDLL(None, use_errno=True)
class sigval(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]
q = 0
while q < 200000 and libc.sigqueue(os.getpid(), int(signal.SIGRTMIN), sigval(0)) == 0:
    q += 1
for path in ("/tmp/fill", "/dev/shm/fill"):
    try:
        with open(path, "wb") as f:
            while True:
                f.write(b"x" * (1 << 20))
    except OSError:
        pass
hits = 0
for pid in range(2, 4000):
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
            hits += 1
        except OSError:
            pass
seen = set()
for line in open("/proc/self/mountinfo"):
    seen.update(re.findall(r"/cf-sbx-[^ ]+", line))
others = []
for p in seen:
    for base in ("", "/proc/1/root", "/tmp/..", "/work/.."):
        try:
            others += os.listdir(base + "/tmp" + p)
        except OSError:
            pass
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for what in ("cwd", "root"):
            try:
                others += [n for n in os.listdir(f"/proc/{pid}/{what}/work") if "victim" in n]
            except OSError:
                pass
print("pipes", len(pipes), "queued", q, "killed", hits, "found", sorted(set(others)), flush=True)
time.sleep(4)
'''

VICTIM = r'''
import ctypes, fcntl, os, signal, subprocess, time
time.sleep(2)  # the hog holds everything by now
print("uid", os.getuid())
child = subprocess.Popen(["sleep", "30"])
r, w = os.pipe()
size = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ
try:
    fcntl.fcntl(w, 1031, 1 << 20)
    grown = fcntl.fcntl(w, 1032)
except OSError as e:
    grown = f"refused:{e.errno}"
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
libc = ctypes.CDLL(None, use_errno=True)
class sigval(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]
sq = libc.sigqueue(os.getpid(), int(signal.SIGRTMIN), sigval(0))
with open("/tmp/mine", "wb") as f:
    f.write(b"y" * (8 << 20))
time.sleep(1)
print("pipe", size, "grown", grown, "sigqueue", sq, "tmp", os.path.getsize("/tmp/mine"),
      "child", child.poll(), "own file", open("victim_secret.txt").read(), flush=True)
child.kill()
'''


def test_a_concurrent_call_is_untouched_by_a_hog_of_every_shared_resource():
    out = {}
    hog = threading.Thread(target=lambda: out.__setitem__(
        "hog", run_sandboxed(["python3", "-c", HOG], timeout_s=20, tmp_mb=32)))
    hog.start()
    time.sleep(0.3)
    v = run_sandboxed(["python3", "main.py"], files={"main.py": VICTIM, "victim_secret.txt": "s3cret"},
                      timeout_s=20, tmp_mb=32)
    hog.join()
    h = out["hog"]
    assert "pipes" in h.stdout, h
    hog_pipes = int(h.stdout.split("pipes ", 1)[1].split()[0])
    assert hog_pipes >= 60, h.stdout  # it did take the pipe pages (16384 by default) for its uid
    assert "found []" in h.stdout, h.stdout  # no trace of the victim's workspace
    assert v.exit_code == 0, v
    assert "pipe 65536 grown 1048576 sigqueue 0 tmp 8388608 child None own file s3cret" in v.stdout, v.stdout
    uids = [int(r.stdout.split("uid ", 1)[1].split()[0]) for r in (h, v)]
    if os.geteuid() == 0:
        assert all(in_pool(u) for u in uids) and uids[0] != uids[1], uids


def test_no_call_can_take_the_hosts_pseudo_terminals():
    """Attack found in the follow-up: every devpts instance but the host's draws on one host-wide pool
    (kernel.pty.max - kernel.pty.reserve, 3072 by default); 30 processes of one call opened /dev/ptmx 3071
    times and a concurrent call's (or any container's) openpty failed. ptmx is masked now: not openable."""
    src = ("import os\nn = 0\nfor path in ('/dev/ptmx', '/dev/pts/ptmx'):\n    try:\n"
           "        os.open(path, os.O_RDWR | os.O_NOCTTY)\n        n += 1\n    except OSError as e:\n"
           "        print('BLOCKED', path, e.errno)\nprint('opened', n)\n")
    before = int(open("/proc/sys/kernel/pty/nr").read())
    r = run_sandboxed(["python3", "-c", src], timeout_s=10)
    assert "opened 0" in r.stdout and r.stdout.count("BLOCKED") == 2, r
    assert int(open("/proc/sys/kernel/pty/nr").read()) <= before
