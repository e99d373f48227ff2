"""Run one untrusted command in a bubblewrap sandbox and read back what it printed and wrote.

Layers, each closing a hole the others leave open:
* setpriv -> uid/gid 65534, no groups, no inheritable caps (when we are root). RLIMIT_NPROC counts per
  real uid, so it only bites for a non-root uid; it is shared by every sandbox running under that uid.
* bwrap --unshare-all (net, pid, ipc, uts, cgroup, user): no network device but a down loopback, so any
  connect() fails at once and no packet leaves; --disable-userns stops nested namespaces; --clearenv so no
  host variable (tokens, paths) leaks in; a new session so the child cannot inject into our terminal.
* filesystem: only /usr (read-only, /usr/local hidden; /bin, /lib, /lib64 link into it), /etc/alternatives (ro:
  Debian's java/cc symlinks point there), a fresh /proc, a minimal /dev, size-capped tmpfs /tmp and
  /dev/shm, and the per-call workspace at /work. /root, /home, the rest of /etc and the host python under
  /root/.pyenv do not exist inside.
* prlimit: address space (memory), CPU seconds, processes, file size, open files.
* the pid namespace: when the command exits or is killed, its pid 1 dies and the kernel kills every
  process left inside it, including ones that escaped with setsid or a double fork.
* wall clock: the whole process group (setpriv/bwrap) is SIGKILLed at the deadline; --die-with-parent
  carries the kill into the namespace.
* output: stdout/stderr are read without blocking (selectors) up to `max_output` bytes each, the rest is
  discarded and a marker appended; past `max_output * OUTPUT_KILL_FACTOR` the run is killed, so an endless
  printer costs no more than that.
Not covered: total disk use of the workspace (RLIMIT_FSIZE caps each file, not their sum) and memory
outside the address-space limit (e.g. page cache); there are no cgroups here (cgroup v1, no delegation).
"""

from __future__ import annotations

import functools
import os
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_UID = 65534  # nobody
OUTPUT_KILL_FACTOR = 16
TRUNCATION_MARKER = "\n[... output truncated by the sandbox: {dropped} more bytes ...]\n"
ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": "/work", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
       "PYTHONDONTWRITEBYTECODE": "1"}
FIX = "run `sudo scripts/setup_system.sh` (it apt-installs bubblewrap, util-linux and python3)"


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message says how to fix it."""


@dataclass
class SandboxResult:
    exit_code: int | None  # None when we killed it; 128+N when the command died of signal N (bwrap's way)
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False  # stdout or stderr was cut at max_output
    killed_by: str | None = None  # "timeout" | "output_limit" | "signal:SIGXCPU" ... | None
    duration_s: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)  # regular files left in the workspace


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
    with tempfile.TemporaryDirectory(prefix="cf-sbx-probe-") as tmp:
        os.chmod(tmp, 0o777)
        proc = subprocess.run(_command(["/usr/bin/true"], Path(tmp), 5, 64, 8, 1 << 20, 16),
                              capture_output=True, timeout=30, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise SandboxUnavailable(f"bubblewrap cannot create its namespaces here ({err[0]}); it needs "
                                 "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
                                 "or a setuid bwrap")
    return bwrap


def _command(cmd: list[str], workdir: Path, timeout_s: float, mem_mb: int, max_procs: int, max_file_bytes: int,
             tmp_mb: int, env: dict[str, str] | None = None, ro_binds: list[str] | None = None) -> list[str]:
    drop = []
    if os.geteuid() == 0:  # as non-root we already are an unprivileged uid
        drop = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                "--inh-caps=-all", "--"]
    args = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--clearenv"]
    for key, value in {**ENV, **(env or {})}.items():
        args += ["--setenv", key, value]
    args += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
             "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
             # host-local installs (and the machine's own tools) stay out unless asked for via ro_binds
             "--tmpfs", "/usr/local"]
    for path in ro_binds or ():
        args += ["--ro-bind", path, path]
    args += ["--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
             "--proc", "/proc", "--dev", "/dev",
             "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--size", str(tmp_mb << 20), "--tmpfs", "/dev/shm",
             "--bind", str(workdir), "/work", "--chdir", "/work",
             # bwrap's own root and /dev are unsized tmpfs: read-only, else files there would eat host RAM
             # (remounts are not recursive, so /tmp, /dev/shm and /work stay writable)
             "--remount-ro", "/usr/local", "--remount-ro", "/dev", "--remount-ro", "/", "--"]
    # CPU seconds: a little over the wall clock, so the wall-clock kill normally comes first and reports it
    limits = ["prlimit", f"--as={mem_mb << 20}", f"--cpu={int(timeout_s) + 2}", f"--nproc={max_procs}",
              f"--fsize={max_file_bytes}", "--nofile=256", "--core=0", "--"]
    return drop + args + limits + list(cmd)


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
) -> SandboxResult:
    """Run `cmd` (argv; resolved inside the sandbox's PATH) with `files` seeded into a fresh /work.

    `ro_binds`: extra host paths shown read-only at the same place (e.g. a toolchain under /usr/local).
    `files` of the result: the regular files in /work afterwards, up to `max_read_back` bytes in all."""
    check_available()
    workdir = Path(tempfile.mkdtemp(prefix="cf-sbx-"))
    try:
        _seed(workdir, files or {})
        argv = _command(cmd, workdir, timeout_s, mem_mb, max_procs, max_file_bytes, tmp_mb, env, ro_binds)
        start = time.monotonic()
        # own process group: the wall-clock kill reaches setpriv/bwrap and nothing of ours
        # env: bwrap's own pid 1 inside the sandbox keeps the environment it was started with, readable there as
        # /proc/1/environ (--clearenv only cleans the command's): give it nothing of ours
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
        if stdin is not None:
            _feed(proc, stdin.encode() if isinstance(stdin, str) else stdin)
        out, err, killed_by = _collect(proc, start + timeout_s, max_output)
        code = proc.wait()
        duration = time.monotonic() - start
        if killed_by is None and code > 128:
            name = signal.Signals(code - 128).name if code - 128 in signal.Signals._value2member_map_ else code - 128
            killed_by = f"signal:{name}"
        return SandboxResult(
            exit_code=None if killed_by in ("timeout", "output_limit") else code,
            stdout=_text(out, max_output), stderr=_text(err, max_output),
            timed_out=killed_by == "timeout", truncated=out.dropped > 0 or err.dropped > 0,
            killed_by=killed_by, duration_s=duration,
            files=_read_back(workdir, max_read_back) if read_back else {},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _seed(workdir: Path, files: dict[str, str | bytes]) -> None:
    if os.geteuid() == 0:  # mkdtemp made it root's and private; the sandbox user must own its workspace
        os.chown(workdir, SANDBOX_UID, SANDBOX_UID)
    workdir.chmod(0o755)
    for rel, data in files.items():
        path = (workdir / rel).resolve()
        if workdir.resolve() not in path.parents:
            raise ValueError(f"sandbox file {rel!r} would land outside the workspace")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        if os.geteuid() == 0:  # the sandbox user may modify its inputs
            for p in [path, *path.parents]:
                if p == workdir:
                    break
                os.chown(p, SANDBOX_UID, SANDBOX_UID)


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)  # small inputs only: a test case's stdin, not a stream
        proc.stdin.close()
    except BrokenPipeError:
        pass


class _Capped:
    def __init__(self, limit: int):
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.dropped += max(len(chunk) - max(room, 0), 0)


def _collect(proc: subprocess.Popen, deadline: float, max_output: int) -> tuple[_Capped, _Capped, str | None]:
    out, err = _Capped(max_output), _Capped(max_output)
    sel = selectors.DefaultSelector()
    for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ, sink)
    killed_by = None
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                killed_by = "timeout"
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:  # EOF: every process holding the pipe is gone
                    sel.unregister(key.fileobj)
                    continue
                key.data.add(chunk)
            if out.dropped + err.dropped > max_output * OUTPUT_KILL_FACTOR:
                killed_by = "output_limit"
                break
        if killed_by is None:  # pipes closed; the process may still be exiting
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                killed_by = "timeout"
    finally:
        if killed_by is not None:
            _kill_group(proc)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    return out, err, killed_by


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _text(buf: _Capped, max_output: int) -> str:
    text = buf.data.decode("utf-8", errors="replace")
    return text + TRUNCATION_MARKER.format(dropped=buf.dropped) if buf.dropped else text


def _read_back(workdir: Path, budget: int) -> dict[str, bytes]:
    """Regular files only, opened without following links: a symlink planted by the command (say to
    /etc/shadow) must not make us, as root, read a host file."""
    files: dict[str, bytes] = {}
    for root, dirs, names in os.walk(workdir, followlinks=False):
        for name in sorted(names):
            path = Path(root) / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # a symlink (ELOOP), a fifo without writer, ...
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size > budget:
                    continue
                budget -= st.st_size
                files[str(path.relative_to(workdir))] = f.read(st.st_size)
    return files
