"""llama-server from the pinned llama.cpp: `--jinja`, MTP self-speculation (`--spec-type draft-mtp`), context,
threads. `llama_server(gguf, serve_cfg)` is the context manager other stages use:

    with llama_server(gguf_path, cfg.serve) as srv:
        post(srv.base_url + "/v1/chat/completions", ...)
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from cardforge.serve.launchers import served_name, settings
from cardforge.serve.process import ManagedServer, ServerStartError, free_port


def llama_server_command(model: str | Path, serve: Any, *, host: str = "127.0.0.1", port: int = 8080,
                         exe: str | None = None) -> list[str]:
    s = settings(serve)
    cmd = [exe or "llama-server", "-m", str(model), "--host", host, "--port", str(port),
           "--alias", served_name(s, model),
           "--jinja",  # the GGUF's own chat template (tools, thinking), not llama.cpp's built-in guess
           "-c", str(s["ctx_size"]),
           "--metrics",  # /metrics carries the spec-decode counters the eval stage reads
           "--no-webui"]
    mmproj = s["mmproj"]  # a path (the serve stage resolves serve.mmproj=auto to one, or None)
    if mmproj and str(mmproj) != "auto":  # the vision projector of a VL model: image requests reach the model
        cmd += ["--mmproj", str(mmproj)]
    threads = int(s["threads"] or 0)
    if threads > 0:  # 0 leaves the choice to llama.cpp (all physical cores)
        cmd += ["-t", str(threads)]
    mtp = s["mtp"]
    if mtp["enabled"]:
        cmd += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(mtp["n_max"]),
                "--spec-draft-p-min", str(float(mtp["p_min"]))]
    return cmd


@contextlib.contextmanager
def llama_server(model: str | Path, serve: Any, *, log_path: str | Path | None = None,
                 extra_args: Sequence[str] = (), timeout_s: float | None = None,
                 port_retries: int = 3) -> Iterator[ManagedServer]:
    """Run llama-server on serve.host (127.0.0.1) and a free port (serve.port=0) until the block exits.

    Raises ServerStartError (with the log tail) if it dies or is not healthy within serve.startup_timeout_s.
    A free port can be taken between our probe and the server's bind, so that case is retried.
    """
    from cardforge.core.llama_cpp import binary

    serve = settings(serve)
    host = serve["host"]
    fixed_port = int(serve["port"] or 0)
    log = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="llama-server-")) / "server.log"
    timeout = float(timeout_s if timeout_s is not None else serve["startup_timeout_s"])
    from cardforge.core.io import check_gguf, check_port_free

    check_gguf(model)  # a corrupt or truncated file is one line, not llama-server's log tail
    check_port_free(host, fixed_port)  # serve.port taken: one line suggesting serve.port=0
    srv = None
    for attempt in range(1 if fixed_port else port_retries):
        port = fixed_port or free_port(host)
        cmd = llama_server_command(model, serve, host=host, port=port, exe=str(binary("llama-server")))
        srv = ManagedServer([*cmd, *extra_args], host, port, log).start()
        try:
            srv.wait_healthy(timeout)
            break
        except BaseException as e:
            srv.stop()
            # a port taken between free_port() and the bind: llama-server exits saying it couldn't bind. Never
            # a timeout (its log tail says "binding port ..." on every start) and never another failure.
            low = str(e).lower()
            retry = (isinstance(e, ServerStartError) and "during startup" in low
                     and ("couldn't bind" in low or "address already in use" in low))
            if not (retry and attempt + 1 < port_retries and not fixed_port):
                raise
    try:
        yield srv
    finally:
        srv.stop()
