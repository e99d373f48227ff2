"""Run one untrusted command in a bubblewrap sandbox and read back what it printed and wrote.

Layers, each closing a hole the others leave open (docs/sandbox.md has the threat model and what is not
promised):
* a cgroup per call (cgroup.py), joined before anything of the call runs: memory of the whole call
  (processes, memfds, tmpfs files), its process count, and a kill that reaches every process of the call.
* setpriv -> a uid/gid of its own per call (uids.py: leased from a pool, so pipe pages, epoll watches,
  pending signals and other per-uid kernel counters are never shared between calls), no groups, no
  inheritable caps (when we are root).
* bwrap --unshare-all (net, pid, ipc, uts, cgroup, user): no network device but a down loopback;
  --disable-userns stops nested namespaces; --clearenv; a new session (no terminal to inject into).
* seccomp (seccomp.py, compiled by libseccomp, loaded by bwrap --seccomp): ptrace, process_vm_*, keyrings,
  bpf, perf, userfaultfd, io_uring, mount/namespace calls, kexec/modules/reboot/swap, file handles ... EPERM.
* filesystem: only /usr (read-only, /usr/local hidden; /bin, /lib, /lib64 link into it), /etc/alternatives
  (ro), a fresh /proc (its init's /proc/1/mem masked), a minimal /dev, size-capped tmpfs /tmp and /dev/shm, and the per-call workspace at
  /work: its own size- and inode-capped tmpfs when we may mount (root), else a plain directory.
* prlimit: address space per process, CPU seconds, processes per uid, file size, open files, no POSIX
  message queues (their bytes are counted per host uid, shared by every sandbox).
* the end of a call: whether the command exited, timed out or flooded its output, the host kills the
  call's cgroup (cgroup.kill) AND the pid namespace's init (by the pid bwrap reports on --json-status-fd,
  through a pidfd), then checks the call is empty (cgroup unpopulated, init gone: the kernel only lets a
  namespace's init finish exiting once every other process in it is gone) before reading anything back.
  A call whose processes cannot be ended raises SandboxBreach: that is a broken sandbox, not bad input.
* read-back (workspace.py): openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS (or an O_NOFOLLOW walk), iterative,
  bounded; the workspace is always removed.
* inputs: a command, environment or file name the kernel cannot take (NUL bytes, an argument over
  MAX_ARG_STRLEN, ...) is refused with a result (killed_by "invalid_input", the reason in stderr), never
  an exception; stdin is written without blocking, within the deadline.
* output: read without blocking up to `max_output` bytes each (a marker says how much was dropped; past
  OUTPUT_KILL_FACTOR x the cap the call is killed); terminal control characters are escaped (ESC -> "\\x1b")
  so a transcript or terminal shows them, never obeys them (text.py; tool observations also get its
  chat-markup neutralising on top: `observation`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import select
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cardforge.core.sandbox import seccomp, workspace
from cardforge.core.sandbox.cgroup import CallCgroup, Layout, owner_alive, owner_tag
from cardforge.core.sandbox.text import escape_controls
from cardforge.core.sandbox.uids import UID_BASE, UID_SLOTS, UidLease

log = logging.getLogger(__name__)

SANDBOX_UID = 65534  # nobody: the default of the helpers below; run_sandboxed runs each call as its own uid (uids.py)
OUTPUT_KILL_FACTOR = 16
TRUNCATION_MARKER = "\n[... output truncated by the sandbox: {dropped} more bytes ...]\n"
ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": "/work", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
       "PYTHONDONTWRITEBYTECODE": "1"}
FIX = "run `sudo scripts/setup_system.sh` (it apt-installs bubblewrap, util-linux, libseccomp2 and python3)"
MAX_ARG_BYTES = 131_072  # the kernel's MAX_ARG_STRLEN: one argv/env string, NUL included
MAX_ARGV_BYTES = 1 << 20  # all of argv + env (the kernel's own cap is larger; this keeps exec certain)
WORKSPACE_INODES = 20_000  # files + directories the workspace may hold
END_S = 10.0  # how long the host waits for a killed call to be empty before declaring a breach
# `sh -c _JOIN cf-sandbox CGROUP.PROCS... -- ARGV...`: join each cgroup, then become ARGV (same pid), so every
# process of the call starts inside them
_JOIN = 'for f do shift; [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; done; exec "$@"'


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message says how to fix it."""


class SandboxBreach(RuntimeError):
    """Processes of a call were still alive after the host killed it: never read back, never ignored."""


@dataclass
class SandboxResult:
    exit_code: int | None  # None when we killed it; 128+N when the command died of signal N (bwrap's way)
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False  # stdout or stderr was cut at max_output
    # "timeout" | "output_limit" | "memory_limit" (the call's cgroup) | "invalid_input" (nothing ran) |
    # "signal:SIGXCPU" ... | None
    killed_by: str | None = None
    duration_s: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)  # regular files left in the workspace
    notes: list[str] = field(default_factory=list)  # what the read-back skipped, which limits applied
    pid_ns: int | None = None  # inode of the call's pid namespace (tests look for survivors by it)


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if not path:
        raise SandboxUnavailable(f"sandbox needs `{name}`, which is not installed: {FIX}")
    return path


@functools.lru_cache(maxsize=1)
def check_available() -> str:
    """Probe once per process that a trivial sandboxed command runs; returns the bwrap path."""
    bwrap = _tool("bwrap")
    _tool("setpriv"), _tool("prlimit")
    if not Path("/usr/bin/python3").exists():
        raise SandboxUnavailable(f"the sandbox runs Python as /usr/bin/python3, which is missing: {FIX}")
    try:
        seccomp.filter_bpf()
    except seccomp.SeccompUnavailable as e:
        raise SandboxUnavailable(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="cf-sbx-probe-") as tmp, UidLease() as uid:
        os.chmod(tmp, 0o777)
        sec = seccomp.filter_fd()
        try:
            argv = _command(["/usr/bin/true"], Path(tmp), 5, 64, 8, 1 << 20, 16, seccomp_fd=sec, status_fd=None,
                            uid=uid)
            proc = subprocess.run(argv, capture_output=True, timeout=30, check=False, pass_fds=(sec,))
        finally:
            os.close(sec)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise SandboxUnavailable(f"bubblewrap cannot create its namespaces here ({err[0]}); it needs "
                                 "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
                                 "or a setuid bwrap")
    return bwrap


def limits_in_force() -> str:
    """Which mechanisms bound a call on this machine, in words (docs/sandbox.md explains each)."""
    ws = "workspace: size-capped tmpfs" if os.geteuid() == 0 else "workspace: plain directory (per-file cap only)"
    walk = "read-back: openat2" if workspace.have_openat2() else "read-back: O_NOFOLLOW walk"
    uid = (f"uid: one per call ({UID_BASE}+slot, {UID_SLOTS} slots)" if os.geteuid() == 0
           else "uid: this user's own (per-uid kernel counters shared)")
    return f"{Layout.probe().describe()}; {ws}; {walk}; seccomp: libseccomp deny list; {uid}"


def _command(cmd: list[str], workdir: Path, timeout_s: float, mem_mb: int, max_procs: int, max_file_bytes: int,
             tmp_mb: int, env: dict[str, str] | None = None, ro_binds: list[str] | None = None, *,
             seccomp_fd: int, status_fd: int | None, uid: int = SANDBOX_UID) -> list[str]:
    drop = []
    if os.geteuid() == 0:  # as non-root we already are an unprivileged uid
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--"]
    args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--clearenv", "--seccomp", str(seccomp_fd)]
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    for key, value in {**ENV, **(env or {})}.items():
        args += ["--setenv", key, value]
    args += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
             "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
             # host-local installs (and the machine's own tools) stay out unless asked for via ro_binds
             "--tmpfs", "/usr/local"]
    for path in ro_binds or ():
        args += ["--ro-bind", path, path]
    args += ["--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
             "--proc", "/proc",
             # bwrap's own init is pid 1 (/proc/1 while bwrap sets up): its memory stays out of reach. ptrace
             # and process_vm_writev are refused, but /proc/1/mem is a third door (same uid, FOLL_FORCE writes
             # into its code): red team #17 injected prctl(PR_SET_PDEATHSIG, 0) there, and a call whose host
             # was killed then outlived it. Masked (host /dev/null on a nodev mount: not even openable)
             "--ro-bind", "/dev/null", "/proc/1/mem", "--ro-bind", "/dev/null", "/proc/1/task/1/mem",
             "--dev", "/dev",
             # no pseudo-terminals: every devpts instance but the host's draws on one host-wide pool
             # (kernel.pty.max - pty.reserve = 3072 here); one call opened all of them and a concurrent call's
             # (or a container's) openpty failed (#17 follow-up). Masked like /proc/1/mem: not openable
             "--ro-bind", "/dev/null", "/dev/pts/ptmx",
             "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--size", str(tmp_mb << 20), "--tmpfs", "/dev/shm",
             "--bind", str(workdir), "/work", "--chdir", "/work",
             # bwrap's own root and /dev are unsized tmpfs: read-only, else files there would eat host RAM
             # (remounts are not recursive, so /tmp, /dev/shm and /work stay writable)
             "--remount-ro", "/usr/local", "--remount-ro", "/dev", "--remount-ro", "/", "--"]
    # CPU seconds: a little over the wall clock, so the wall-clock kill normally comes first and reports it
    limits = ["prlimit", f"--as={mem_mb << 20}", f"--cpu={int(timeout_s) + 2}", f"--nproc={max_procs}",
              f"--fsize={max_file_bytes}", "--nofile=256", "--core=0",
              # POSIX message queue bytes are counted per HOST uid (819200 by default) and every sandbox is
              # uid 65534: one call's queues starved the others' mq_open (red team #17); none for anyone
              "--msgqueue=0", "--"]
    return drop + args + limits + list(cmd)


def _invalid(cmd, files, env, stdin) -> tuple[str | None, dict[str, bytes]]:
    """(why the kernel or the workspace cannot take these inputs, the acceptable files as bytes)."""
    good: dict[str, bytes] = {}
    problems = []
    for rel, data in (files or {}).items():
        why = _bad_name(rel)
        if why is None and not isinstance(data, (str, bytes)):
            why = f"its content is a {type(data).__name__}, not str or bytes"
        if why:
            problems.append(f"file {_show(rel)}: {why}")
        else:
            good[rel] = data.encode("utf-8", "replace") if isinstance(data, str) else data
    if not isinstance(cmd, (list, tuple)) or not cmd:
        problems.append("the command must be a non-empty list of arguments")
    else:
        total = 0
        for i, arg in enumerate(cmd):
            why = _bad_string(arg)
            if why:
                problems.append(f"command argument {i}: {why}")
            elif (n := len(os.fsencode(arg)) + 1) > MAX_ARG_BYTES:
                problems.append(f"command argument {i} is {n} bytes, over the kernel's {MAX_ARG_BYTES} per argument: "
                                "write it to a file in the workspace and run that file instead")
            else:
                total += n
        for key, value in (env or {}).items():
            why = _bad_string(key) or _bad_string(value) or ("'=' in the name" if "=" in str(key) else None)
            if why:
                problems.append(f"environment variable {_show(key)}: {why}")
            else:
                total += len(os.fsencode(key)) + len(os.fsencode(value)) + 2
        if total > MAX_ARGV_BYTES:
            problems.append(f"the command and environment take {total} bytes, over {MAX_ARGV_BYTES}: "
                            "pass large inputs as files or stdin")
    if stdin is not None and not isinstance(stdin, (str, bytes)):
        problems.append(f"stdin is a {type(stdin).__name__}, not str or bytes")
    return ("; ".join(problems) or None), good


def _bad_string(s) -> str | None:
    if not isinstance(s, str):
        return f"a {type(s).__name__}, not a string"
    if "\0" in s:
        return "contains a NUL byte, which no command line or file name can hold"
    try:
        os.fsencode(s)
    except UnicodeEncodeError:
        return "not encodable as UTF-8 (a lone surrogate)"
    return None


def _bad_name(rel) -> str | None:
    why = _bad_string(rel)
    if why:
        return why
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return "would land outside the workspace (absolute, empty or '..' component): use a relative path"
    if any(len(p.encode()) > 255 for p in parts) or len(rel.encode()) > 4000:
        return "the name is too long (255 bytes per component, 4000 in all)"
    return None


def _show(s) -> str:
    text = repr(s)
    return text if len(text) <= 80 else text[:77] + "..."


def _refused(why: str, files: dict[str, bytes]) -> SandboxResult:
    return SandboxResult(exit_code=None, stdout="", stderr=f"sandbox: refused, nothing ran: {why}\n",
                         killed_by="invalid_input", files=dict(files))


def run_sandboxed(
    cmd: list[str],
    files: dict[str, str | bytes] | None = None,
    timeout_s: float = 10,
    mem_mb: int = 512,
    max_procs: int = 32,
    max_output: int = 64_000,
    *,
    max_file_bytes: int = 16 << 20,
    tmp_mb: int = 64,
    stdin: str | bytes | None = None,
    env: dict[str, str] | None = None,
    ro_binds: list[str] | None = None,
    read_back: bool = True,
    max_read_back: int = 4 << 20,
    workspace_mb: int | None = None,
    total_mem_mb: int | None = None,
    deadline_after: tuple[str, float] | None = None,
) -> SandboxResult:
    """Run `cmd` (argv; resolved inside the sandbox's PATH) with `files` seeded into a fresh /work.

    `mem_mb`: address space of each process; `total_mem_mb`: memory of the whole call (every process,
    memfd and tmpfs file; default mem_mb + the tmpfs sizes, so a single process meets its own limit
    first). `workspace_mb`: the workspace's size (default: 64 MiB over the seed and the read-back cap).
    `ro_binds`: extra host paths shown read-only at the same place (e.g. a toolchain under /usr/local).
    `files` of the result: the regular files in /work afterwards, up to `max_read_back` bytes in all.
    `deadline_after=(marker, seconds)`: once the command writes `marker` to stderr, the host's deadline
    becomes at most `seconds` later (never later than `timeout_s`). For a script that supervises a step
    itself (`timeout` in the coding runner): the step can stop its supervisor (`kill -STOP -1`), not this.
    Bad inputs come back as a result with killed_by "invalid_input" (nothing ran), never as an exception."""
    check_available()
    why, good = _invalid(cmd, files, env, stdin)
    if why:
        return _refused(why, good)
    seed_bytes = sum(len(v) for v in good.values())
    if workspace_mb is None:
        workspace_mb = ((seed_bytes + max_read_back) >> 20) + 64
    if total_mem_mb is None:
        total_mem_mb = mem_mb + 2 * tmp_mb + workspace_mb
    data = stdin.encode("utf-8", "replace") if isinstance(stdin, str) else stdin
    _sweep()  # what a killed host left: its calls' processes and cgroups, then its workspaces
    lease = UidLease()  # this call's own host uid (uids.py): no per-uid kernel counter shared with another call
    breach = False
    try:
        # the owner (pid and start time) in the name: whose it is, should one be left (the next call's sweep)
        workdir = tempfile.mkdtemp(prefix=f"cf-sbx-{owner_tag()}-")
        mounted = False
        try:
            if os.geteuid() == 0:
                mounted = workspace.mount_tmpfs(workdir, workspace_mb << 20, WORKSPACE_INODES, lease.uid)
            problem = _seed(Path(workdir), good, lease.uid)
            if problem:
                return _refused(problem, good)
            return _run(list(cmd), Path(workdir), data, timeout_s=timeout_s, mem_mb=mem_mb, max_procs=max_procs,
                        max_output=max_output, max_file_bytes=max_file_bytes, tmp_mb=tmp_mb, env=env,
                        ro_binds=ro_binds, read_back=read_back, max_read_back=max_read_back,
                        total_mem_mb=total_mem_mb, mounted=mounted, deadline_after=deadline_after, uid=lease.uid)
        finally:
            _remove_workspace(workdir, mounted)
    except SandboxBreach:
        breach = True  # processes of this uid may still run: the uid is never handed to another call
        raise
    finally:
        if not breach:
            lease.release()


def _sweep() -> None:
    """End and remove what calls of a dead host process left (Layout.sweep: live processes in their cgroups
    included), then their workspaces. Raises SandboxBreach when such processes cannot be ended."""
    left = Layout.probe().sweep()
    if left:
        raise SandboxBreach("processes of a call whose host died cannot be ended: " + "; ".join(left[:5]))
    tmp = tempfile.gettempdir()
    try:
        names = [e.name for e in os.scandir(tmp) if e.name.startswith("cf-sbx-") and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for name in names:
        tag = name[len("cf-sbx-"):]
        if tag.split("-")[0].isdigit() and not owner_alive(tag):
            path = os.path.join(tmp, name)
            try:
                _remove_workspace(path, mounted=True)  # unmount is a no-op where nothing is mounted
                log.warning("sandbox: removed %s, the workspace of a call whose host process died", path)
            except OSError:
                pass  # logged by _remove_workspace; the next call tries again


def _remove_workspace(workdir: str, mounted: bool) -> None:
    try:
        if mounted:
            workspace.unmount(workdir)
        workspace.remove_tree(workdir)
    except OSError as e:  # never silently: a workspace left behind is a disk leak
        log.error("sandbox workspace %s could not be removed: %s", workdir, e)
        raise


def _seed(workdir: Path, files: dict[str, bytes], uid: int = SANDBOX_UID) -> str | None:
    root = os.geteuid() == 0
    if root:  # the sandbox user must own its workspace (mkdtemp made it root's and private)
        os.chown(workdir, uid, uid)
    workdir.chmod(0o755)
    try:
        for rel, data in files.items():
            path = workdir / rel
            for parent in reversed([p for p in path.parents if workdir in p.parents]):
                if not parent.is_dir():
                    parent.mkdir()
                    if root:
                        os.chown(parent, uid, uid)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if root:  # the sandbox user may modify its inputs
                os.chown(path, uid, uid)
    except OSError as e:  # ENOSPC (over the workspace size), a name both a file and a directory, ...
        return f"the files cannot be laid out in the workspace ({e.strerror}: {_show(e.filename)})"
    return None


class _Capped:
    def __init__(self, limit: int):
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.dropped += max(len(chunk) - max(room, 0), 0)


class _Call:
    """One started sandbox: its process, pipes, the namespace init it reports, and its cgroup."""

    def __init__(self, proc: subprocess.Popen, status_r: int, cg: CallCgroup | None):
        self.proc, self.status_r, self.cg = proc, status_r, cg
        self.pidfd = os.pidfd_open(proc.pid)  # ours to reap: the pid cannot be reused while we hold it
        self.init_fd: int | None = None  # pidfd of the namespace's init (bwrap's pid 1)
        self.pid_ns: int | None = None
        self.status = b""

    def read_status(self) -> bool:
        """bwrap's --json-status-fd: the first line names the namespace's init (host pid) and its pid
        namespace. Only bwrap writes there (the fd is closed before the command starts). False at EOF."""
        try:
            chunk = os.read(self.status_r, 4096)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.status += chunk
        if self.init_fd is None and b"\n" in self.status:
            line = self.status.split(b"\n", 1)[0]
            pid, ns = re.search(rb'"child-pid"\s*:\s*(\d+)', line), re.search(rb'"pid-namespace"\s*:\s*(\d+)', line)
            if ns:
                self.pid_ns = int(ns.group(1))  # bwrap's own word, for the result (tests look for survivors)
            if pid:
                self._adopt(int(pid.group(1)), self.pid_ns)
        return True

    def _adopt(self, pid: int, reported_ns: int | None) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # already gone: then so is its namespace
        try:
            ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
        except OSError:
            os.close(fd)  # exited meanwhile (a zombie has no namespace links): its namespace is gone too
            return
        # never signal a process that is not the init bwrap made: same namespace as reported, not ours
        if ns == os.stat("/proc/self/ns/pid").st_ino or (reported_ns is not None and ns != reported_ns):
            if not _readable(fd):
                log.error("sandbox: bwrap reported pid %d in pid namespace %s, but it is in %d: ignored",
                          pid, reported_ns, ns)
            os.close(fd)
            return
        self.init_fd, self.pid_ns = fd, ns

    def end(self) -> bool:
        """Kill everything of the call and wait until it is gone; False if something is left."""
        if self.cg is not None:
            self.cg.kill()
        if self.init_fd is not None:
            try:
                signal.pidfd_send_signal(self.init_fd, signal.SIGKILL)  # the kernel ends the whole namespace
            except OSError:
                pass
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)  # setpriv/bwrap outside the namespace
        except OSError:
            pass
        deadline = time.monotonic() + END_S
        try:
            self.proc.wait(timeout=END_S)
        except subprocess.TimeoutExpired:
            return False
        if self.init_fd is not None:  # readable once the init has fully exited, i.e. its namespace is empty
            left = max(deadline - time.monotonic(), 0.0)
            if not select.select([self.init_fd], [], [], left)[0]:
                return False
        if self.cg is not None and not self.cg.wait_empty(max(deadline - time.monotonic(), 0.0)):
            return False
        return True

    def close(self) -> None:
        for fd in (self.pidfd, self.init_fd, self.status_r):
            if fd is not None:
                os.close(fd)
        self.pidfd = self.init_fd = self.status_r = None


def _run(cmd: list[str], workdir: Path, stdin: bytes | None, *, timeout_s: float, mem_mb: int, max_procs: int,
         max_output: int, max_file_bytes: int, tmp_mb: int, env, ro_binds, read_back: bool, max_read_back: int,
         total_mem_mb: int, mounted: bool, deadline_after: tuple[str, float] | None = None,
         uid: int = SANDBOX_UID) -> SandboxResult:
    layout = Layout.probe()
    notes = [] if mounted or os.geteuid() != 0 else ["workspace: not a tmpfs (mount refused): total size not capped"]
    cg, proc, call, ended = None, None, None, False
    status_r = status_w = sec = -1
    try:
        cg = CallCgroup(layout, total_mem_mb << 20, max_procs) if layout.kill else None
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        sec = seccomp.filter_fd()
        argv = _command(cmd, workdir, timeout_s, mem_mb, max_procs, max_file_bytes, tmp_mb, env, ro_binds,
                        seccomp_fd=sec, status_fd=status_w, uid=uid)
        if cg is not None:  # join the call's cgroups first, then become setpriv/bwrap (same pid)
            joins = cg.procs_files()
            argv = ["/bin/sh", "-c", _JOIN, "cf-sandbox", *joins, "--", *argv]
        start = time.monotonic()
        # own process group and session; env: bwrap's own pid 1 keeps the environment it was started with,
        # readable inside as /proc/1/environ (--clearenv only cleans the command's): give it nothing of ours
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}, pass_fds=(status_w, sec))
        call, status_r = _Call(proc, status_r, cg), -1  # the call owns the status pipe from here
        os.close(status_w)
        status_w = -1
        os.close(sec)
        sec = -1
        out, err, killed_by = _collect(call, start + timeout_s, max_output, stdin, deadline_after)
        contained, ended = call.end(), True
        duration = time.monotonic() - start
        code = proc.returncode
        if not contained:
            left = sorted(cg.pids()) if cg else []
            raise SandboxBreach(f"sandbox call {cmd[:3]!r}: processes still alive after the kill "
                                f"(cgroup pids {left[:10]}, pid namespace {call.pid_ns}); nothing was read back")
        if killed_by is None and cg is not None and cg.oom_killed():
            killed_by = "memory_limit"
        if killed_by is None and code is not None and code > 128:
            name = signal.Signals(code - 128).name if code - 128 in signal.Signals._value2member_map_ else code - 128
            killed_by = f"signal:{name}"
        files = {}
        if read_back:
            rb = workspace.read_back(str(workdir), max_read_back)
            files, notes = rb.files, notes + rb.notes
        return SandboxResult(
            exit_code=None if killed_by in ("timeout", "output_limit") else code,
            stdout=_text(out), stderr=_text(err),
            timed_out=killed_by == "timeout", truncated=out.dropped > 0 or err.dropped > 0,
            killed_by=killed_by, duration_s=duration, files=files, notes=notes, pid_ns=call.pid_ns,
        )
    finally:
        if call is not None:
            if not ended:  # an error (or an interrupt) on our side mid-call: the call still ends here
                call.end()
            call.close()
        elif proc is not None:  # started, but never tracked (no pidfd): its group and cgroup go now
            if cg is not None:
                cg.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for fd in (status_r, status_w, sec):
            if fd >= 0:
                os.close(fd)
        if cg is not None:
            cg.remove()


def _collect(call: _Call, deadline: float, max_output: int, stdin: bytes | None,
             deadline_after: tuple[str, float] | None = None) -> tuple[_Capped, _Capped, str | None]:
    """Read stdout/stderr (and bwrap's status), feed stdin, until the command is done or must be stopped.
    Done = bwrap exited (its init, so the command, ended) and the pipes are drained; whatever still holds
    a pipe after that is a survivor, ended by the kill that follows (call.end)."""
    proc = call.proc
    out, err = _Capped(max_output), _Capped(max_output)
    sel = selectors.DefaultSelector()
    for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ, sink)
    os.set_blocking(call.status_r, False)
    sel.register(call.status_r, selectors.EVENT_READ, "status")
    sel.register(call.pidfd, selectors.EVENT_READ, "exit")
    pending = memoryview(stdin) if stdin is not None else None
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
    killed_by = None
    exited_at = None
    marker = os.fsencode(deadline_after[0]) if deadline_after and deadline_after[0] else None
    tail = b""  # the end of stderr so far: the marker may be split across reads, or come past the cap
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                killed_by = "timeout"
                break
            streams = [k for k in sel.get_map().values() if isinstance(k.data, _Capped)]
            if exited_at is not None and (not streams or now - exited_at > 0.5):
                break  # done; a pipe still open after bwrap is gone is held by a survivor: the kill ends it
            for key, _ in sel.select(timeout=min(deadline - now, 0.5)):
                if key.data == "exit":
                    sel.unregister(key.fd)
                    exited_at = time.monotonic()
                    if call.init_fd is None:
                        call.read_status()
                elif key.data == "status":
                    if not call.read_status() or call.init_fd is not None:
                        sel.unregister(key.fd)  # EOF, or the init is known: the rest (exit code) is not needed
                elif key.data == "stdin":
                    try:
                        n = os.write(key.fd, pending[:1 << 16])
                        pending = pending[n:]
                    except BlockingIOError:
                        continue
                    except OSError:  # EPIPE: the program stopped reading; that is its business
                        pending = pending[:0]
                    if not len(pending):
                        sel.unregister(key.fd)
                        proc.stdin.close()
                else:
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    key.data.add(chunk)
                    if marker is not None and key.data is err:
                        seen = tail + chunk
                        if marker in seen:
                            deadline = min(deadline, time.monotonic() + deadline_after[1])
                            marker = None
                        tail = seen[-(len(marker) - 1):] if marker is not None and len(marker) > 1 else b""
            if out.dropped + err.dropped > max_output * OUTPUT_KILL_FACTOR:
                killed_by = "output_limit"
                break
    finally:
        sel.close()
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
    if killed_by is None:  # drain what the command wrote before it ended (the pipes are ours to empty)
        for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
            while True:
                try:
                    chunk = os.read(stream.fileno(), 1 << 16)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                sink.add(chunk)
                if sink.dropped > max_output * OUTPUT_KILL_FACTOR:
                    break
    proc.stdout.close()
    proc.stderr.close()
    return out, err, killed_by


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


_escape = escape_controls  # text.py: C0/C1 controls, a lone CR, bidi/line-separator/zero-width controls


def _text(buf: _Capped) -> str:
    text = _escape(buf.data.decode("utf-8", errors="replace"))
    return text + TRUNCATION_MARKER.format(dropped=buf.dropped) if buf.dropped else text
