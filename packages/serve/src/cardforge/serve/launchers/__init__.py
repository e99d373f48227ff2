"""Launchers: one module per engine, each building its exact command line from the same `serve` config.

`COMMANDS` is a lazy registry (backend -> "module:function") so no engine is imported to build a command.
Every builder has the signature `(model, serve, *, host, port, exe=None) -> list[str]`.
"""

from __future__ import annotations

import importlib
from enum import Enum
from pathlib import Path
from typing import Any, Callable

COMMANDS = {
    "llama_cpp": "cardforge.serve.launchers.llama_cpp:llama_server_command",
    "vllm": "cardforge.serve.launchers.vllm:vllm_command",
    "sglang": "cardforge.serve.launchers.sglang:sglang_command",
}
# where each engine says it is ready (all answer 200 when the model is loaded)
HEALTH_PATHS = {"llama_cpp": "/health", "vllm": "/health", "sglang": "/health"}


def option(serve: Any, key: str, default: Any = None) -> Any:
    """A serve-config value from a DictConfig, a dataclass or a dict; enums as their value."""
    val = serve.get(key, default) if hasattr(serve, "get") else getattr(serve, key, default)
    return val.value if isinstance(val, Enum) else val


def backend_name(serve: Any) -> str:
    return str(option(serve, "backend", "llama_cpp"))


def served_name(serve: Any, model: str | Path) -> str:
    """The API's model name: serve.served_model_name, else the model file/dir/id's last part (no slashes,
    clients put it in URLs and file names)."""
    name = option(serve, "served_model_name")
    if not name:
        name = Path(str(model).rstrip("/")).name
        if name.endswith(".gguf"):
            name = name[: -len(".gguf")]
    return name.replace("/", "--")


def command_builder(backend: str) -> Callable[..., list[str]]:
    if backend not in COMMANDS:
        raise ValueError(f"serve.backend: unknown backend {backend!r}; choose one of: {', '.join(COMMANDS)}")
    module, _, fn = COMMANDS[backend].partition(":")
    return getattr(importlib.import_module(module), fn)


def build_command(model: str | Path, serve: Any, *, host: str | None = None, port: int | None = None,
                  exe: str | None = None) -> list[str]:
    backend = backend_name(serve)
    return command_builder(backend)(
        model, serve, host=host or option(serve, "host", "127.0.0.1"),
        port=int(port if port is not None else option(serve, "port", 0)), exe=exe)
