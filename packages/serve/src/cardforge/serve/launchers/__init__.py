"""Launchers: one module per engine, each building its exact command line from the same `serve` config.

`COMMANDS` is a lazy registry (backend -> "module:function") so no engine is imported to build a command.
Every builder has the signature `(model, serve, *, host, port, exe=None) -> list[str]`.
"""

from __future__ import annotations

import importlib
import json
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


def checkpoint_quantization(model: str | Path) -> str | None:
    """The `--quantization` a local ModelOpt checkpoint is served with, read from its hf_quant_config.json
    (the layout cardforge's quant stage writes for NVFP4): quant_algo NVFP4 / W4A16_NVFP4 -> "modelopt_fp4"
    (vLLM's and SGLang's name for ModelOpt NVFP4), FP8* -> "modelopt". None for anything else (BF16, FP8
    block-128 with `quantization_config` in config.json, an HF id): the engine reads config.json."""
    path = Path(str(model)) / "hf_quant_config.json"
    try:
        quant = json.loads(path.read_text()).get("quantization") or {}
    except (OSError, ValueError, AttributeError):
        return None
    algo = str(quant.get("quant_algo") or "").upper() if isinstance(quant, dict) else ""
    if "FP4" in algo:
        return "modelopt_fp4"
    return "modelopt" if algo.startswith("FP8") else None


def quantization(serve: Any, model: str | Path) -> str | None:
    """serve.quantization when set, else what the checkpoint's own files call for."""
    return option(serve, "quantization") or checkpoint_quantization(model)


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
