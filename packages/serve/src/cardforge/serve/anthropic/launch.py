"""`anthropic_bridge(backend_url)`: the guard (the Anthropic endpoint we ship) as a managed subprocess (own
process group, watchdog, health wait), for the serve stage and tests, in front of an engine they started."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from cardforge.serve.process import ManagedServer, free_port, managed_server


@contextlib.contextmanager
def anthropic_bridge(backend_url: str, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                     model: str | None = None, log_path: str | Path | None = None,
                     timeout_s: float = 60.0) -> Iterator[ManagedServer]:
    port = port or free_port(host)
    cmd = [sys.executable, "-m", "cardforge.serve.anthropic", "--backend", backend_url,
           "--host", host, "--port", str(port), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    env = None
    if api_key:  # through the environment, not argv: `ps` shows argv to every user
        import os

        env = {**os.environ, "CARDFORGE_BRIDGE_API_KEY": api_key}
    log = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="anthropic-bridge-")) / "bridge.log"
    with managed_server(cmd, host=host, port=port, log_path=log, timeout_s=timeout_s, env=env) as srv:
        yield srv
