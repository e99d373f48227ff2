"""The hostile-call suite: programs that try to break out or bring the host down, with what must happen.

The programs are data: tests/fixtures/hostile/<case>/<language>.<ext> (the library holds no attack code).
This module says, per case, what the attack is, which limits it runs under and how to judge the result;
`HostWatch` checks the host afterwards, after EVERY case: no process left in the call's pid namespace (nor
of the sandbox uid started by it), nothing written outside, no connection reached a host listener, no
host file came back through the read-back.

Classes of attack (issue #17): escapes and hogs (fork bomb, network, writes and reads outside, memory,
CPU, output, setsid daemons), the sandbox's own init (tracing it, signalling it), other ABIs around the
seccomp filter, filesystem races against the read-back, memory across processes and memfds, resource
exhaustion (workspace bytes and entries), malformed outputs and files. Two sandboxes at once and malformed
inputs are tests of their own (tests/integration/test_sandbox_hostile.py, tests/unit/test_sandbox_run.py).

Every language runner runs the same cases: Python and bash here (RUNNERS), every coding-eval language
through its compile-and-run script (cardforge.eval.coding.runner.hostile_runner; tests/integration/
test_coding_hostile.py). A case without a program in a language says why (`unsupported`).

    for case in cases_for("python"):
        result, problems = run_case(case, "python", my_runner)   # my_runner(source, limits) -> SandboxResult
        assert not problems

Placeholders in programs: {token} (unique per run: names escape files), {port} (a host listener on
127.0.0.1), {outside} (TEST-NET-1 192.0.2.1, never routed), {outside_dir} (a host directory of canary files
the read-back must never return), {cwd}, and a case's own `params`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cardforge.core.sandbox import SandboxResult, run_sandboxed
from cardforge.core.sandbox.uids import in_pool

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hostile"
EXT = {"python": "py", "bash": "sh", "javascript": "js", "typescript": "ts", "java": "java", "cpp": "cpp",
       "c": "c", "rust": "rs", "go": "go", "ruby": "rb"}
NEW_LANGUAGES = ("javascript", "typescript", "java", "cpp", "c", "rust", "go", "ruby")
OUTSIDE = "192.0.2.1"
Runner = Callable[[str, dict], SandboxResult]  # (program source, run_sandboxed limits) -> result
Check = Callable[[SandboxResult], list[str]]


def program(case: str, language: str) -> str:
    return (FIXTURES / case / f"{language}.{EXT[language]}").read_text()


def programs(case: str) -> dict[str, str]:
    return {lang: program(case, lang) for lang in EXT if (FIXTURES / case / f"{lang}.{EXT[lang]}").exists()}


@dataclass(frozen=True)
class HostileCase:
    name: str
    what: str  # the attack, in words
    check: Check  # problems with the result (empty = contained)
    limits: dict = field(default_factory=dict)  # run_sandboxed keyword overrides
    max_duration_s: float = 8.0
    checks: dict[str, Check] = field(default_factory=dict)  # language -> a check replacing `check` for it
    # language -> why it cannot express the attack as written: its program is then the nearest equivalent
    # (say, spawning processes where the runtime has no fork), or it has none
    unsupported: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # extra placeholders of this case
    program_of: str | None = None  # read another case's programs (variants of one attack)
    slow: bool = False  # only in `make test-full`
    needs: str | None = None  # "x86_64" | "cgroup-memory" | "root": skipped where the machine lacks it
    # judged against run_sandboxed's limits (`limits`): the coding runner applies its own per-language limits
    # and its own in-sandbox `timeout`, so these run through the plain runners only
    plain_only: bool = False

    @property
    def programs(self) -> dict[str, str]:
        return programs(self.program_of or self.name)

    def check_for(self, language: str) -> Check:
        return self.checks.get(language, self.check)


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


def _sandbox_uid(r: SandboxResult) -> list[str]:
    """The program ran as a uid of the call's own (uids.py pool) when we are root, else as our own uid."""
    seen = [int(u) for u in re.findall(r"\buid (\d+)", r.stdout + r.stderr)]
    ok = in_pool if os.geteuid() == 0 else (lambda u: u == os.geteuid())
    return [] if seen and all(ok(u) for u in seen) else [f"expected the call's own sandbox uid, printed {seen}"]


def _number(r: SandboxResult, key: str) -> int:
    m = re.findall(rf"{key} (\d+)", r.stdout)
    return int(m[-1]) if m else -1


def _budget_mb(limits: dict) -> int:
    """The whole-call memory run_sandboxed derives when total_mem_mb is not given (its documented default)."""
    mem, tmp = limits.get("mem_mb", 512), limits.get("tmp_mb", 64)
    ws = limits.get("workspace_mb", ((limits.get("max_read_back", 4 << 20)) >> 20) + 64)
    return limits.get("total_mem_mb", mem + 2 * tmp + ws)


_MULTI = {"mem_mb": 256, "tmp_mb": 16, "timeout_s": 8}
_MEMFD = {"mem_mb": 256, "tmp_mb": 16, "timeout_s": 8}
_DISK = {"timeout_s": 8, "max_read_back": 1 << 20}


def _held_under_budget(r: SandboxResult) -> list[str]:
    """What the children hold at once: 150 MB per child still alive when the parent counts (HOLDING). HELD
    lines alone add up over time (the kernel kills a child, the next one then fits), so they are only the
    fallback when the parent itself was stopped before counting."""
    alive = _number(r, "HOLDING")
    held = 150 * (alive if alive >= 0 else r.stdout.count("HELD 150"))
    budget = _budget_mb(_MULTI)
    return [] if held <= budget else [f"children held {held} MB at once, over the call's {budget} MB"]


def _memfd_under_budget(r: SandboxResult) -> list[str]:
    mb, budget = _number(r, "MEMFD_MB"), _budget_mb(_MEMFD)
    if mb < 0 and r.killed_by != "memory_limit":
        return ["the program neither reported nor was stopped by the memory limit"]
    return [] if mb <= budget else [f"{mb} MB of memfds held, over the call's {budget} MB"]


def _disk_under_cap(r: SandboxResult) -> list[str]:
    mb, cap = _number(r, "WROTE_MB"), (_DISK["max_read_back"] >> 20) + 64  # run_sandboxed's default size
    return [] if 0 <= mb <= cap else [f"wrote {mb} MB into the workspace, over its {cap} MB"]


def _no_host_canary(r: SandboxResult) -> list[str]:
    leaked = sorted(k for k, v in r.files.items() if b"HOSTSECRET" in v)
    return [f"host files came back through the read-back: {leaked[:5]} ({len(leaked)} in all)"] if leaked else []


def _special_files(r: SandboxResult) -> list[str]:
    problems = []
    if r.files.get("keep.txt") != b"kept\n":
        problems.append(f"the plain file was not read back (files: {sorted(r.files)[:10]})")
    bad = [k for k in r.files if k in ("shadow", "etc", "loop", "dangling", "fifo", "sock")
           or k.startswith("etc/") or "\udcff" in k]
    if bad:
        problems.append(f"links, special files or undecodable names came back: {bad}")
    if any(k.count("/") > 70 for k in r.files):
        problems.append("the read-back went deeper than its bound")
    return problems


def _escaped(r: SandboxResult) -> list[str]:
    text = r.stdout + r.stderr
    raw = sorted({hex(ord(c)) for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F})
    problems = [f"raw control characters reached the result: {raw}"] if raw else []
    if "\\x1b[2J" not in r.stdout or "visible" not in r.stdout or "\\x0d" not in r.stdout:
        problems.append("the escapes are not shown escaped")
    return problems


# a sandbox-level attack, written in Python/bash only: the sandbox under every language's runner is the same
_SANDBOX_LEVEL = ("a sandbox-level attack (the sandbox's init, its seccomp filter, its cgroup or its "
                  "workspace), written in Python and bash: every language runs in the same sandbox, so a "
                  "program per language would test the same boundary again")


def _only(*languages: str) -> dict[str, str]:
    return {lang: _SANDBOX_LEVEL for lang in EXT if lang not in languages}


PY_CASES: list[HostileCase] = [
    HostileCase(
        "fork_bomb", "fork until the process limit; children sleep so they pile up",
        # contained = the process limit refused forks (python reports it, bash retries and says so)
        # (or the wall clock ended it first: a slow runtime on a loaded machine may not reach the limit in time)
        _expect(extra=lambda r: [] if "fork refused" in r.stdout or "Resource temporarily unavailable" in r.stderr
                or r.timed_out else [f"no sign that the process limit refused a fork (killed_by={r.killed_by}, "
                                     f"{r.duration_s:.1f} s)"]),
        limits={"timeout_s": 4}),
    HostileCase(
        "network_loopback", "connect to a port the host listens on at 127.0.0.1",
        _expect(out=("BLOCKED loopback",), not_out=("ESCAPED",), max_s=2.0)),
    HostileCase(
        "network_outside", "connect to an outside address and resolve a name",
        _expect(out=("BLOCKED outside",), not_out=("ESCAPED",), max_s=2.0)),
    HostileCase(
        "write_outside", "write files outside the workspace (host /tmp, /root, /usr, /etc, the repo)",
        _expect(not_out=("ESCAPED /root", "ESCAPED /usr", "ESCAPED /etc", "ESCAPED /cf-", "ESCAPED /work/.."))),
    HostileCase(
        "read_secrets", "read /etc/shadow, /root, the host python and the host environment",
        _expect(out=("BLOCKED /etc/shadow", "BLOCKED /root", "executable /usr/bin/python3"),
                not_out=("ESCAPED /etc", "ESCAPED /root", "ESCAPED /home", "CARDFORGE_CANARY"), extra=_sandbox_uid)),
    HostileCase(
        "memory_hog", "allocate 2 GB at once, then grow a list until memory runs out",
        _expect(out=("BLOCKED big alloc", "BLOCKED growth"), not_out=("ALLOCATED",)),
        limits={"mem_mb": 256}),
    HostileCase(
        "infinite_loop", "spin the CPU forever",
        _expect(timed_out=True, killed_by="timeout", max_s=4.0), limits={"timeout_s": 2}),
    HostileCase(
        "huge_output", "print without end",
        _expect(max_s=5.0, extra=lambda r: ([] if r.truncated and len(r.stdout) < 64_000 + 200
                                            else [f"stdout not capped: {len(r.stdout)} chars"])),
        max_duration_s=13.0),  # node's bound (_NODE_OUTPUT); the rest must end within max_s
    HostileCase(
        "escape_setsid", "a child that setsid()s, double-forks and sleeps forever while the parent exits",
        _expect(out=("parent done",), timed_out=False, max_s=3.0)),
    HostileCase(
        "disk_filler", "write a 100 MB file in the workspace and fill /tmp",
        _expect(out=("BLOCKED /work/big", "BLOCKED /tmp/fill"),
                extra=lambda r: [] if len(r.files.get("big", b"")) <= 16 << 20 else ["/work/big exceeds the cap"])),
    # ---- issue #17: the classes the suite lacked ----
    HostileCase(
        "ptrace_init", "PTRACE_ATTACH the sandbox's init, inject prctl(PDEATHSIG, 0) and close(1/2), keep it "
        "stopped from a setsid() daemon so the call is outlived",
        _expect(out=("BLOCKED ptrace",), not_out=("ESCAPED",)), limits={"timeout_s": 4},
        params={"swap": "0"}, unsupported=_only("python"), needs="x86_64"),
    HostileCase(
        "ptrace_init_swap", "the surviving daemon of ptrace_init swaps a workspace directory with a symlink to "
        "a host directory (renameat2 RENAME_EXCHANGE) in a tight loop against the host's read-back",
        _expect(not_out=("ESCAPED",), extra=_no_host_canary), limits={"timeout_s": 4},
        params={"swap": "1"}, program_of="ptrace_init", unsupported=_only("python"), needs="x86_64"),
    HostileCase(
        "signal_init", "stop, terminate and kill the sandbox's own init and every reachable process, with a "
        "setsid() daemon left behind",
        # plain only: under the coding runner, `kill -STOP -1` also stops the runner's in-sandbox `timeout`,
        # so the call lasts until the host's wall clock (contained, but slow: see docs/sandbox.md)
        _expect(out=("done",), timed_out=False, max_s=4.0), unsupported=_only("python", "bash"), plain_only=True),
    HostileCase(
        "proc_mem_init", "write into the sandbox's init through /proc/1/mem and /proc/1/task/1/mem (the door "
        "ptrace and process_vm_writev leave)",
        # red team (#17): both were writable; an injected prctl(PR_SET_PDEATHSIG, 0) let a call outlive a
        # host killed mid-call (this case is that PoC). Now masked in run.py
        _expect(out=("BLOCKED /proc/1/mem", "BLOCKED /proc/1/task/1/mem"), not_out=("ESCAPED",), max_s=4.0),
        unsupported=_only("python")),
    HostileCase(
        "stop_supervisor", "kill -STOP -1 (every reachable process, the coding runner's in-sandbox `timeout` "
        "included), then spin: only a deadline the program cannot signal may end it",
        # red team (#17): under the coding runner this ran to the host's whole-script limit (compile + run +
        # 10 s: 72 s for python at timeout 2); now the host ends the run step itself (deadline_after)
        _expect(timed_out=True, killed_by="timeout", max_s=8.0), limits={"timeout_s": 2}, max_duration_s=8.0,
        unsupported=_only("python", "bash")),
    HostileCase(
        "abi_bypass_i386", "call ptrace through the i386 ABI (int 0x80) to get around an x86_64-only filter",
        _expect(not_out=("RETURNED i386 0",), extra=lambda r: [] if r.killed_by == "signal:SIGSYS" else [
            f"expected the foreign-ABI call to be killed (SIGSYS), got killed_by={r.killed_by}"]),
        params={"abi": "i386"}, program_of="abi_bypass", unsupported=_only("python"), needs="x86_64"),
    HostileCase(
        "abi_bypass_x32", "call ptrace through the x32 ABI (nr | 0x40000000) to get around the filter",
        _expect(not_out=("RETURNED x32 0",), extra=lambda r: [] if r.killed_by == "signal:SIGSYS"
                or re.search(r"RETURNED x32 -\d+", r.stdout) else ["the x32 call was neither killed nor refused"]),
        params={"abi": "x32"}, program_of="abi_bypass", unsupported=_only("python"), needs="x86_64"),
    HostileCase(
        "memory_multiproc", "8 forked children of 150 MB each, every one under the per-process limit",
        _expect(extra=_held_under_budget), limits=_MULTI, max_duration_s=12,
        unsupported=_only("python"), needs="cgroup-memory", plain_only=True),
    HostileCase(
        "memory_memfd", "memfds filled with write() and never mapped: memory no address-space limit sees",
        _expect(extra=_memfd_under_budget), limits=_MEMFD, max_duration_s=12,
        unsupported=_only("python"), needs="cgroup-memory", plain_only=True),
    HostileCase(
        "disk_exhaustion", "40 files of 15 MB each in the workspace (each under the per-file cap)",
        _expect(out=("BLOCKED disk",), extra=_disk_under_cap), limits=_DISK, max_duration_s=10,
        unsupported=_only("python"), needs="root", plain_only=True),
    HostileCase(
        "inode_exhaustion", "60,000 empty files in the workspace: entries, not bytes",
        _expect(out=("BLOCKED inodes",)), limits={"timeout_s": 20}, max_duration_s=25,
        unsupported=_only("bash"), needs="root", plain_only=True),
    HostileCase(
        "special_files", "a 1200-deep tree, links to host paths, loops, a fifo, a socket, mode-000 entries, "
        "non-UTF-8 and escape-sequence names in the workspace",
        _expect(out=("planted",), extra=_special_files), max_duration_s=15, unsupported=_only("python")),
    HostileCase(
        "terminal_escapes", "output that clears the screen, retitles it, writes the clipboard (OSC 52), "
        "overwrites a line with a carriage return, NUL and invalid UTF-8",
        _expect(extra=_escaped), unsupported=_only("python")),
]

# ---- the other coding languages (issue #8 item 5) ----
_NO_FORK = ("no fork: the runtime has one process (and threads) it cannot duplicate safely; the program spawns "
            "`sleep` children through {api} until the process limit refuses one (the same limit a fork hits)")
_NO_SETSID = ("no fork/setsid in the language: the program starts a child in a new session ({api}) that leaves "
              "a grandchild behind and exits")
_UNSUPPORTED = {
    "fork_bomb": {"javascript": _NO_FORK.format(api="child_process.spawn"),
                  "typescript": _NO_FORK.format(api="child_process.spawn"),
                  "java": _NO_FORK.format(api="ProcessBuilder"), "go": _NO_FORK.format(api="os/exec")},
    "escape_setsid": {"javascript": _NO_SETSID.format(api="spawn detached"),
                      "typescript": _NO_SETSID.format(api="spawn detached"),
                      "java": _NO_SETSID.format(api="ProcessBuilder of util-linux setsid"),
                      "go": _NO_SETSID.format(api="os/exec with SysProcAttr.Setsid")},
    "memory_hog": {"go": "the Go runtime treats a failed allocation as fatal: the 2 GB make kills the program "
                         "(contained) and it never reaches the growth part"},
}
# read_secrets: only Python can say which interpreter ran (the host's pyenv one must not): the rest print
# their uid and environment
_SECRETS = _expect(out=("BLOCKED /etc/shadow", "BLOCKED /root"),
                   not_out=("ESCAPED /etc", "ESCAPED /root", "ESCAPED /home", "CARDFORGE_CANARY"), extra=_sandbox_uid)


def _go_oom(r: SandboxResult) -> list[str]:
    text = r.stdout + r.stderr
    return [] if "out of memory" in r.stderr and r.exit_code not in (0, None) and "ALLOCATED" not in text else [
        f"expected the Go runtime to die out of memory (exit {r.exit_code}, stdout={r.stdout[-300:]!r}, "
        f"stderr={r.stderr[-300:]!r})"]


# huge_output in node: `for (;;) process.stdout.write(s)` never yields to the event loop, so once the pipe is full
# node queues the writes in its own heap (the host sees ~130 KB, not the 1 MB that ends a call by output_limit) and
# aborts at the runner's --max-old-space-size=256. Contained, but bounded by filling 256 MB (CPU): 5.6-8.2 s under
# a load of 15-25 on 2 cores, so the bound is the run step's own (DEFAULT_TIMEOUT_S 10 s + `timeout -k 2` + 1 s)
_NODE_OUTPUT = _expect(max_s=13.0, extra=lambda r: ([] if r.truncated and len(r.stdout) < 64_000 + 200
                                                    else [f"stdout not capped: {len(r.stdout)} chars"]))
_CHECKS = {"read_secrets": {lang: _SECRETS for lang in NEW_LANGUAGES}, "memory_hog": {"go": _go_oom},
           "huge_output": {"javascript": _NODE_OUTPUT, "typescript": _NODE_OUTPUT}}

CASES = [replace(c, checks={**c.checks, **_CHECKS.get(c.name, {})},
                 unsupported={**c.unsupported, **_UNSUPPORTED.get(c.name, {})}) for c in PY_CASES]


def cases_for(language: str) -> list[HostileCase]:
    return [c for c in CASES if language in c.programs]


def missing_need(case: HostileCase) -> str | None:
    """Why this machine cannot run the case (None: it can)."""
    from cardforge.core.sandbox.cgroup import Layout

    if case.needs == "x86_64" and os.uname().machine != "x86_64":
        return "the attack program is x86_64 machine code"
    if case.needs == "cgroup-memory" and Layout.probe().memory is None:
        return "no writable memory cgroup here: the per-process fallback budget applies (docs/sandbox.md)"
    if case.needs == "root" and os.geteuid() != 0:
        return "the workspace is a size-capped tmpfs only when the host runs as root"
    return None


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
        self.outside_dir = tempfile.mkdtemp(prefix="cf-hostile-canary-")
        for i in range(200):  # the names ptrace_init_swap's program plants inside, with host-only content
            Path(self.outside_dir, f"s{i:03d}").write_text(f"HOSTSECRET-{self.token}\n")

    def fill(self, program: str, params: dict | None = None) -> str:
        for key, value in (params or {}).items():
            program = program.replace("{" + key + "}", value)
        return (program.replace("{token}", self.token).replace("{port}", str(self.port))
                .replace("{outside_dir}", self.outside_dir).replace("{outside}", OUTSIDE)
                .replace("{cwd}", self.cwd).replace("{{", "{").replace("}}", "}"))

    def escape_paths(self) -> list[Path]:
        name = f"cf-escape-{self.token}"
        return [Path("/tmp") / name, Path("/root") / name, Path("/") / name, Path("/usr") / name,
                Path("/etc") / name, Path(self.cwd) / name]

    def problems(self, result: SandboxResult | None = None, settle_s: float = 3.0) -> list[str]:
        out = []
        try:
            self.listener.accept()
            out.append("a connection reached the host listener on 127.0.0.1")
        except BlockingIOError:
            pass
        finally:
            self.listener.close()
            shutil.rmtree(self.outside_dir, ignore_errors=True)
        out += [f"file written outside the sandbox: {p}" for p in self.escape_paths() if p.exists()]
        # survivors: every process still in the call's pid namespace (the host's record, and what the
        # program printed itself), checked right away: the call has returned, nothing may be left
        namespaces = {int(n) for n in re.findall(r"PIDNS (\d+)", result.stdout)} if result else set()
        if result is not None and getattr(result, "pid_ns", None):
            namespaces.add(result.pid_ns)
        deadline = time.monotonic() + 0.5  # a zombie's last reaping may trail the return by a moment
        while (left := namespace_processes(namespaces)) and time.monotonic() < deadline:
            time.sleep(0.05)
        out += [f"process left running in the call's pid namespace: pid {pid} {cmd!r}" for pid, cmd in left]
        _kill_all(left)  # a failed case must not poison the next ones
        return out


def namespace_processes(namespaces: set[int]) -> list[tuple[int, str]]:
    """(pid, cmdline) of live (not zombie) host processes in any of these pid namespaces."""
    found = []
    if not namespaces:
        return found
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "pid").st_ino not in namespaces:
                continue
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
            if "Z" in state.split()[1]:
                continue
            found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, StopIteration):
            continue
    return found


def _kill_all(procs: list[tuple[int, str]]) -> None:
    for pid, _ in procs:
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def python_runner(source: str, limits: dict) -> SandboxResult:
    return run_sandboxed(["/usr/bin/python3", "main.py"], files={"main.py": source}, **limits)


def bash_runner(source: str, limits: dict) -> SandboxResult:
    return run_sandboxed(["/usr/bin/bash", "main.sh"], files={"main.sh": source}, **limits)


RUNNERS: dict[str, Runner] = {"python": python_runner, "bash": bash_runner}


def run_case(case: HostileCase, language: str, runner: Runner | None = None) -> tuple[SandboxResult, list[str]]:
    """Run one case; returns the result and every problem found (in the result or on the host)."""
    watch = HostWatch()
    try:
        result = (runner or RUNNERS[language])(watch.fill(case.programs[language], case.params), dict(case.limits))
    except BaseException:
        watch.problems()
        raise
    problems = case.check_for(language)(result)
    if result.duration_s > case.max_duration_s:
        problems.append(f"took {result.duration_s:.1f} s (limit {case.max_duration_s} s)")
    return result, problems + watch.problems(result)
