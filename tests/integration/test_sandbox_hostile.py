"""The hostile-call suite (tests/support/hostile.py, programs under tests/fixtures/hostile/) against the real
bubblewrap sandbox: each attack is contained and the host is unharmed, checked after EVERY case (no process
left in the call's pid namespace, no file outside, no connection to a host listener, no host file read
back, this test process still fine). Plus two sandboxes at once.

Default tier: every Python/bash case but the slow ones (`make test-full` runs those too)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from cardforge.core.sandbox import run_sandboxed
from cardforge.core.sandbox.uids import in_pool
from support.hostile import HostWatch, cases_for, missing_need, namespace_processes, run_case


def _param(case, lang):
    marks = [pytest.mark.slow] if case.slow else []
    why = missing_need(case)
    if why:
        marks.append(pytest.mark.skip(reason=why))
    return pytest.param(case, lang, id=f"{lang}-{case.name}", marks=marks)


PARAMS = [_param(case, lang) for lang in ("python", "bash") for case in cases_for(lang)]


@pytest.mark.parametrize("case,language", PARAMS)
def test_hostile_case_is_contained(case, language, monkeypatch):
    monkeypatch.setenv("CARDFORGE_CANARY", "host-secret")  # read_secrets checks it does not leak in
    pid = os.getpid()
    result, problems = run_case(case, language)
    assert problems == [], f"{case.name} ({case.what}) was not contained:\n" + "\n".join(problems)
    # the test process itself is fine: same pid, can still start processes
    assert os.getpid() == pid
    assert subprocess.run(["/bin/true"], check=False).returncode == 0
    assert result.pid_ns and not namespace_processes({result.pid_ns})


def test_sandboxed_code_cannot_see_host_python_or_env(monkeypatch):
    monkeypatch.setenv("CARDFORGE_CANARY", "host-secret")
    code = ("import os, sys, shutil; print(sys.executable, shutil.which('python3'), os.getuid(), "
            "os.path.exists('/root/.pyenv'), 'host-secret' in str(os.environ))")
    r = run_sandboxed(["python3", "-c", code])
    assert r.exit_code == 0, r.stderr
    out = r.stdout.split()
    assert out[:2] == ["/usr/bin/python3", "/usr/bin/python3"] and out[3:] == ["False", "False"], out
    assert in_pool(int(out[2])) if os.geteuid() == 0 else int(out[2]) == os.geteuid()


def test_two_sandboxes_at_once_stay_apart():
    """A long call and a short one side by side: neither sees the other's files or processes, ending one
    (here: killing its own init) leaves the other running, and both come back with their own files."""
    results = {}
    slow_src = ("import os, time\nopen('slow.txt', 'w').write('slow')\ntime.sleep(1.5)\n"
                "print(sorted(os.listdir('/work')), sorted(p for p in os.listdir('/proc') if p.isdigit()))\n")
    fast_src = ("import os, signal\nopen('fast.txt', 'w').write('fast')\n"
                "print(sorted(os.listdir('/work')), sorted(p for p in os.listdir('/proc') if p.isdigit()), flush=True)\n"
                "os.kill(1, signal.SIGKILL)\n")

    def run(name, src):
        results[name] = run_sandboxed(["python3", "main.py"], files={"main.py": src}, timeout_s=10)

    slow = threading.Thread(target=run, args=("slow", slow_src))
    slow.start()
    time.sleep(0.3)
    run("fast", fast_src)
    slow.join()
    s, f = results["slow"], results["fast"]
    assert s.exit_code == 0 and not s.timed_out, s
    assert s.stdout.startswith("['main.py', 'slow.txt']"), s.stdout
    assert f.stdout.startswith("['fast.txt', 'main.py']"), f.stdout
    # each sees only its own pid namespace: its init, itself (and python's own children, none here)
    assert len(eval(f.stdout.split("] ", 1)[1])) <= 3 and len(eval(s.stdout.split("] ", 1)[1])) <= 3
    assert set(s.files) == {"main.py", "slow.txt"} and set(f.files) == {"main.py", "fast.txt"}
    assert s.pid_ns != f.pid_ns and not namespace_processes({s.pid_ns, f.pid_ns})


def test_two_hostile_cases_at_once_are_both_contained():
    """Concurrency: a fork bomb and a signal storm against init run side by side; each is contained and
    nothing of either survives."""
    cases = {c.name: c for c in cases_for("python")}
    out = {}

    def run(name):
        out[name] = run_case(cases[name], "python")

    threads = [threading.Thread(target=run, args=(n,)) for n in ("fork_bomb", "signal_init")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, (result, problems) in out.items():
        assert problems == [], (name, problems)


def test_host_watch_sees_a_survivor():
    """The survivor check can fail: a process left in a pid namespace of ours is reported (and ended)."""
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        ns = None
        while ns is None and time.monotonic() < deadline:
            for child in os.listdir("/proc"):
                try:
                    if child.isdigit() and open(f"/proc/{child}/cmdline", "rb").read() == b"sleep\x0030\x00":
                        cand = os.stat(f"/proc/{child}/ns/pid").st_ino
                        if cand != os.stat("/proc/self/ns/pid").st_ino:
                            ns = cand
                except OSError:
                    pass
            time.sleep(0.02)
        assert ns is not None
        watch = HostWatch()
        r = run_sandboxed(["true"])
        r.stdout = f"PIDNS {ns}\n"
        problems = watch.problems(r)
        assert any("left running" in p for p in problems), problems
    finally:
        proc.kill()
        proc.wait()


def test_one_sandbox_cannot_starve_another_of_per_uid_kernel_counters():
    """Red team (#17): every sandbox runs as the same host uid, and some kernel counters are per host uid
    (inotify instances: fs.inotify.max_user_instances, 128 by default; POSIX message queue bytes:
    RLIMIT_MSGQUEUE, 819200). One call took all of them and a concurrent call's inotify_init / mq_open
    failed with EMFILE; now the filter refuses inotify (EPERM, tools fall back to polling) and every call
    gets RLIMIT_MSGQUEUE 0, so no call holds any. The process limit is per call (pids.max / a user
    namespace each), not shared."""
    hog = ("import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\nn = 0\n"
           "while n < 400 and libc.inotify_init() >= 0:\n    n += 1\n"
           "rt = ctypes.CDLL('librt.so.1')\nq = 0\n"
           "while q < 100 and rt.mq_open(b'/q%d' % q, os.O_CREAT | os.O_RDWR, 0o600, None) >= 0:\n    q += 1\n"
           "print('queues', q, flush=True)\n"
           "k = 0\nfor _ in range(40):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
           "    if pid == 0:\n        time.sleep(4)\n        os._exit(0)\n    k += 1\n"
           "print('held', n, 'forks', k, flush=True)\ntime.sleep(4)\n")
    victim = ("import ctypes, os, time\ntime.sleep(1.5)\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "fd = libc.inotify_init()\nprint('inotify', fd, ctypes.get_errno(), flush=True)\nn = 0\n"
              "for _ in range(8):\n    if os.fork() == 0:\n        os._exit(0)\n    n += 1\nprint('forked', n)\n")
    results = {}
    t = threading.Thread(target=lambda: results.__setitem__(
        "hog", run_sandboxed(["python3", "-c", hog], timeout_s=10, max_procs=32)))
    t.start()
    time.sleep(0.2)
    v = run_sandboxed(["python3", "-c", victim], timeout_s=10, max_procs=32)
    t.join()
    h = results["hog"]
    assert "held 0 forks" in h.stdout and "queues 0" in h.stdout, h
    fd, err = (int(x) for x in v.stdout.split("inotify ", 1)[1].split()[:2])
    assert fd < 0 and err != 24 and "forked 8" in v.stdout, v  # refused by the filter, not starved (EMFILE)


@pytest.mark.slow
def test_a_call_whose_host_is_killed_leaves_nothing_even_after_init_injection(tmp_path):
    """Red team (#17): the command wrote prctl(PR_SET_PDEATHSIG, 0) into its init's code through /proc/1/mem
    (ptrace being refused), left a daemon, and the host process was SIGKILLed mid-call: init, command and
    daemon kept running with no one to end them. /proc/1/mem is masked now; bwrap's --die-with-parent ends
    the namespace when the host dies."""
    token = uuid.uuid4().hex[:12]
    prog = (Path(__file__).resolve().parent.parent / "fixtures" / "hostile" / "host_death_inject.py").read_text()
    host = tmp_path / "host.py"
    host.write_text("import sys\nfrom cardforge.core.sandbox import run_sandboxed\n"
                    f"run_sandboxed(['python3', 'main.py', {token!r}], files={{'main.py': {prog!r}}}, timeout_s=30)\n")
    proc = subprocess.Popen([sys.executable, str(host)], cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _with_token(token):
            time.sleep(0.2)
        assert _with_token(token), "the daemon never started"
        proc.kill()
        proc.wait()
        time.sleep(2)
        left = _with_token(token)
    finally:
        for pid in _namespace_of(_with_token(token)):  # end what survived: never leave it for others
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for mount in Path("/proc/self/mounts").read_text().splitlines():
            point = mount.split()[1]
            if point.startswith(f"/tmp/cf-sbx-{proc.pid}-"):  # a killed host leaves its workspace (docs)
                subprocess.run(["umount", "-l", point], check=False)
                shutil.rmtree(point, ignore_errors=True)
    assert not left, f"processes of the call outlived its killed host: {left}"


def _with_token(token: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and f"cf-rt-{token}".encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


def _namespace_of(pids: list[int]) -> list[int]:
    """Every process in the pid namespaces of `pids` (found from the host side)."""
    spaces = set()
    for pid in pids:
        try:
            spaces.add(os.stat(f"/proc/{pid}/ns/pid").st_ino)
        except OSError:
            pass
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and os.stat(d / "ns" / "pid").st_ino in spaces:
                out.append(int(d.name))
        except OSError:
            pass
    return out
