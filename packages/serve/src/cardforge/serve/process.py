"""One server process we own: started in its own process group, waited on until healthy, stopped whole.

Guarantees (tested with a real `kill -9` of the owning Python process):
- the server runs in a new session/process group, so a terminal Ctrl-C reaches only us and we stop it
  in order (SIGTERM to the group, SIGKILL after a grace period);
- PR_SET_PDEATHSIG(SIGKILL) on the leader when started from the main thread (instant, kernel-side);
- a watchdog process (`cardforge.serve.watchdog`) kills the group if we die by any means, including
  SIGKILL, and covers engines that fork workers (vLLM, SGLang) and starts from non-main threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """The server exited or never became healthy; the message carries the log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn: SIGKILL this child when the forking thread dies; bail out if the parent already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died between fork and prctl
        os._exit(1)


@dataclass
class ManagedServer:
    """A started server process. `base_url` answers HTTP once `wait_healthy` returned."""

    command: list[str]
    host: str
    port: int
    log_path: Path
    health_path: str = "/health"
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    watchdog: subprocess.Popen | None = field(default=None, repr=False)
    startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "ManagedServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        me = os.getpid()
        preexec = None
        if threading.current_thread() is threading.main_thread():
            preexec = lambda: _die_with_parent(me)  # noqa: E731
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {subprocess.list2cmdline(self.command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=preexec, env=env,
            )
        # own session too: a killpg of *our* group (a test harness, a shell) must not take the watchdog with it
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "cardforge.serve.watchdog", str(me), str(self.proc.pid)],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def wait_healthy(self, timeout_s: float) -> "ManagedServer":
        """Poll GET health_path until 200; raise ServerStartError with the log tail on exit or timeout."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        url = self.base_url + self.health_path
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"{Path(self.command[0]).name} exited with status {code} during startup "
                    f"(log: {self.log_path}):\n{log_tail(self.log_path)}")
            left = timeout_s - (time.monotonic() - t0)  # no poll after the deadline, none outlasts it
            if left <= 0:
                self.stop()
                raise ServerStartError(
                    f"{Path(self.command[0]).name} not healthy at {url} after {timeout_s:.0f} s "
                    f"(raise serve.startup_timeout_s; log: {self.log_path}):\n{log_tail(self.log_path)}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                with urllib.request.urlopen(url, timeout=min(2.0, max(left, 0.05))) as resp:
                    if resp.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return self
            time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the whole group, SIGKILL after grace_s; returns the leader's exit status."""
        code = None
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                code = self.proc.wait()
            # workers that ignored SIGTERM after the leader exited
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                self.watchdog.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(timeout=5)
        return code


@contextlib.contextmanager
def managed_server(command: Sequence[str], *, host: str, port: int, log_path: Path, timeout_s: float,
                   health_path: str = "/health", env: Mapping[str, str] | None = None):
    """Start, wait for health, yield the ManagedServer, always stop (exceptions and Ctrl-C included)."""
    srv = ManagedServer(list(command), host, port, Path(log_path), health_path, env)
    srv.start()
    try:
        srv.wait_healthy(timeout_s)
        yield srv
    finally:
        srv.stop()
