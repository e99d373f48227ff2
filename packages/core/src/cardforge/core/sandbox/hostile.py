"""The hostile-call suite: programs that try to break out or bring the host down, with what must happen.

Every language runner (Python now; bash here as a second; the coding-eval runners later) runs the same
cases: a case carries one program per language and a check on the `SandboxResult`; `HostWatch` checks
the host afterwards (no process of the sandbox uid left, nothing written outside the workspace, no
connection reached a host listener). Reuse:

    for case in cases_for("python"):
        problems = run_case(case, "python", my_runner)   # my_runner(source, limits) -> SandboxResult
        assert not problems

Placeholders in programs: {token} (unique per run: names escape files), {port} (a host listener on
127.0.0.1), {outside} (an address outside: TEST-NET-1 192.0.2.1, reserved, never routed, so even a
sandbox failure would send nothing to a real host).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cardforge.core.sandbox.run import SANDBOX_UID, SandboxResult, run_sandboxed

OUTSIDE = "192.0.2.1"
Runner = Callable[[str, dict], SandboxResult]  # (program source, run_sandboxed limits) -> result


@dataclass(frozen=True)
class HostileCase:
    name: str
    what: str  # the attack, in words
    programs: dict[str, str]  # language -> source, with {token}/{port}/{outside} placeholders
    check: Callable[[SandboxResult], list[str]]  # problems with the result (empty = contained)
    limits: dict = field(default_factory=dict)  # run_sandboxed keyword overrides
    max_duration_s: float = 8.0


def _expect(*, out: tuple[str, ...] = (), not_out: tuple[str, ...] = (), timed_out: bool | None = None,
            killed_by: str | None = None, max_s: float | None = None, extra=None):
    def check(r: SandboxResult) -> list[str]:
        text = r.stdout + r.stderr
        problems = [f"expected {s!r} in the output" for s in out if s not in text]
        problems += [f"{s!r} must not appear in the output" for s in not_out if s in text]
        if timed_out is not None and r.timed_out != timed_out:
            problems.append(f"timed_out is {r.timed_out}, expected {timed_out}")
        if killed_by is not None and r.killed_by != killed_by:
            problems.append(f"killed_by is {r.killed_by!r}, expected {killed_by!r}")
        if max_s is not None and r.duration_s > max_s:
            problems.append(f"took {r.duration_s:.1f} s, expected under {max_s} s (must fail fast)")
        if extra:
            problems += extra(r)
        return [f"{p} (stdout={r.stdout[-300:]!r}, stderr={r.stderr[-300:]!r})" for p in problems]
    return check


PY_TRY = """
import os, socket, sys
def attempt(label, fn):
    try:
        fn()
        print("ESCAPED", label, flush=True)
    except BaseException as e:
        print("BLOCKED", label, type(e).__name__, e, flush=True)
"""

CASES: list[HostileCase] = [
    HostileCase(
        "fork_bomb", "fork until the process limit; children sleep so they pile up",
        {"python": "import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n"
                   "        print('fork refused after', n, type(e).__name__, flush=True)\n        break\n"
                   "    if pid == 0:\n        time.sleep(1000)\n    n += 1\n",
         # each call sleeps after forking so the processes pile up; the classic form lets its first shell
         # exit at once, and the sandbox (pid namespace) ended before the limit was ever reached: a flaky test
         "bash": ":(){ :|:& sleep 10; };:\n"},
        # contained = the process limit refused forks (python reports it, bash retries and says so)
        _expect(extra=lambda r: [] if "fork refused" in r.stdout or "Resource temporarily unavailable" in r.stderr
                else ["no sign that the process limit refused a fork"]),
        limits={"timeout_s": 4}),
    HostileCase(
        "network_loopback", "connect to a port the host listens on at 127.0.0.1",
        {"python": PY_TRY + "s = socket.socket(); s.settimeout(3)\n"
                            "attempt('loopback', lambda: s.connect(('127.0.0.1', {port})))\n",
         "bash": "exec 3<>/dev/tcp/127.0.0.1/{port} && echo ESCAPED loopback || echo BLOCKED loopback\n"},
        _expect(out=("BLOCKED loopback",), not_out=("ESCAPED",), max_s=2.0)),
    HostileCase(
        "network_outside", "connect to an outside address and resolve a name",
        {"python": PY_TRY + "s = socket.socket(); s.settimeout(3)\n"
                            "attempt('outside', lambda: s.connect(('{outside}', 80)))\n"
                            "attempt('dns', lambda: socket.getaddrinfo('pypi.org', 443))\n"
                            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                            "attempt('udp', lambda: u.sendto(b'x', ('{outside}', 53)))\n",
         "bash": "exec 3<>/dev/tcp/{outside}/80 && echo ESCAPED outside || echo BLOCKED outside\n"},
        _expect(out=("BLOCKED outside",), not_out=("ESCAPED",), max_s=2.0)),
    HostileCase(
        "write_outside", "write files outside the workspace (host /tmp, /root, /usr, /etc, the repo)",
        {"python": PY_TRY + "for p in ['/tmp/../cf-escape-{token}', '/root/cf-escape-{token}', "
                            "'/usr/cf-escape-{token}', '/etc/cf-escape-{token}', '/cf-escape-{token}', "
                            "'/work/../cf-escape-{token}', '{cwd}/cf-escape-{token}']:\n"
                            "    attempt(p, lambda: open(p, 'w').write('x'))\n"},
        _expect(not_out=("ESCAPED /root", "ESCAPED /usr", "ESCAPED /etc", "ESCAPED /cf-", "ESCAPED /work/..")),
        ),
    HostileCase(
        "read_secrets", "read /etc/shadow, /root, the host python and the host environment",
        {"python": PY_TRY + "attempt('/etc/shadow', lambda: open('/etc/shadow').read())\n"
                            "attempt('/root', lambda: os.listdir('/root'))\n"
                            "attempt('/root/.pyenv', lambda: os.listdir('/root/.pyenv'))\n"
                            "attempt('/home', lambda: os.listdir('/home'))\n"
                            "attempt('/proc/1/environ', lambda: open('/proc/1/environ').read())\n"
                            "print('executable', sys.executable, 'uid', os.getuid(), flush=True)\n"
                            "print('env', sorted(os.environ), flush=True)\n"},
        _expect(out=("BLOCKED /etc/shadow", "BLOCKED /root", "executable /usr/bin/python3", f"uid {SANDBOX_UID}"),
                not_out=("ESCAPED /etc", "ESCAPED /root", "ESCAPED /home", "CARDFORGE_CANARY"))),
    HostileCase(
        "memory_hog", "allocate 2 GB at once, then grow a list until memory runs out",
        {"python": "try:\n    b = bytearray(2 * 1024**3)\n    print('ALLOCATED 2GB', flush=True)\n"
                   "except MemoryError:\n    print('BLOCKED big alloc', flush=True)\nx = []\ntry:\n"
                   "    while True:\n        x.append(bytearray(10**7))\nexcept MemoryError:\n"
                   "    print('BLOCKED growth at', len(x) * 10, 'MB', flush=True)\n"},
        _expect(out=("BLOCKED big alloc", "BLOCKED growth"), not_out=("ALLOCATED",)),
        limits={"mem_mb": 256}),
    HostileCase(
        "infinite_loop", "spin the CPU forever",
        {"python": "while True:\n    pass\n", "bash": "while :; do :; done\n"},
        _expect(timed_out=True, killed_by="timeout", max_s=4.0), limits={"timeout_s": 2}),
    HostileCase(
        "huge_output", "print without end",
        {"python": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", "bash": "yes xxxxxxxx\n"},
        _expect(max_s=5.0, extra=lambda r: ([] if r.truncated and len(r.stdout) < 64_000 + 200
                                            else [f"stdout not capped: {len(r.stdout)} chars"]))),
    HostileCase(
        "escape_setsid", "a child that setsid()s, double-forks and sleeps forever while the parent exits",
        {"python": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                   "        time.sleep(1000)\n    os._exit(0)\nprint('parent done', flush=True)\n",
         "bash": "setsid sh -c 'sleep 1000 & sleep 1000' &\necho parent done\n"},
        _expect(out=("parent done",), timed_out=False, max_s=3.0)),
    HostileCase(
        "disk_filler", "write a 100 MB file in the workspace and fill /tmp",
        {"python": PY_TRY + "def big(p):\n    with open(p, 'wb') as f:\n        for _ in range(100):\n"
                            "            f.write(b'x' * 2**20)\n"
                            "attempt('/work/big', lambda: big('/work/big'))\n"
                            "attempt('/tmp/fill', lambda: [big(f'/tmp/f{{i}}') for i in range(8)])\n"},
        _expect(out=("BLOCKED /work/big", "BLOCKED /tmp/fill"),
                extra=lambda r: [] if len(r.files.get("big", b"")) <= 16 << 20 else ["/work/big exceeds the cap"])),
]


def cases_for(language: str) -> list[HostileCase]:
    return [c for c in CASES if language in c.programs]


class HostWatch:
    """Host-side evidence that a case did no harm: listener untouched, no escape files, no leftovers."""

    def __init__(self):
        self.token = uuid.uuid4().hex[:12]
        self.cwd = os.getcwd()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]

    def fill(self, program: str) -> str:
        return (program.replace("{token}", self.token).replace("{port}", str(self.port))
                .replace("{outside}", OUTSIDE).replace("{cwd}", self.cwd).replace("{{", "{").replace("}}", "}"))

    def escape_paths(self) -> list[Path]:
        name = f"cf-escape-{self.token}"
        return [Path("/tmp") / name, Path("/root") / name, Path("/") / name, Path("/usr") / name,
                Path("/etc") / name, Path(self.cwd) / name]

    def problems(self, settle_s: float = 3.0) -> list[str]:
        out = []
        try:
            self.listener.accept()
            out.append("a connection reached the host listener on 127.0.0.1")
        except BlockingIOError:
            pass
        finally:
            self.listener.close()
        out += [f"file written outside the sandbox: {p}" for p in self.escape_paths() if p.exists()]
        deadline = time.monotonic() + settle_s  # the kernel tears a pid namespace down asynchronously
        while (left := uid_processes(SANDBOX_UID)) and time.monotonic() < deadline:
            time.sleep(0.05)
        out += [f"process of uid {SANDBOX_UID} left running: pid {pid} {cmd!r}" for pid, cmd in left]
        return out


def uid_processes(uid: int) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose real uid is `uid` (zombies are dead: not counted)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, KeyError, ValueError):
            continue  # it exited while we looked
    return found


def python_runner(source: str, limits: dict) -> SandboxResult:
    return run_sandboxed(["/usr/bin/python3", "main.py"], files={"main.py": source}, **limits)


def bash_runner(source: str, limits: dict) -> SandboxResult:
    return run_sandboxed(["/usr/bin/bash", "main.sh"], files={"main.sh": source}, **limits)


RUNNERS: dict[str, Runner] = {"python": python_runner, "bash": bash_runner}


def run_case(case: HostileCase, language: str, runner: Runner | None = None) -> tuple[SandboxResult, list[str]]:
    """Run one case; returns the result and every problem found (in the result or on the host)."""
    watch = HostWatch()
    result = (runner or RUNNERS[language])(watch.fill(case.programs[language]), dict(case.limits))
    problems = case.check(result)
    if result.duration_s > case.max_duration_s:
        problems.append(f"took {result.duration_s:.1f} s (limit {case.max_duration_s} s)")
    return result, problems + watch.problems()
