"""Launchers: one module per engine, each building its exact command line from the same `serve` config.

`COMMANDS` is a lazy registry (backend -> "module:function") so no engine is imported to build a command.
Every builder has the signature `(model, serve, *, host, port, exe=None) -> list[str]`.

The values live in conf/ only: `serve` is the composed `cfg.serve` (every key present), or a partial mapping (the
teacher's helper server, tests) whose missing keys come from `conf/defaults/serve.yaml` (`settings`). No builder
carries a fallback value of its own.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import sys
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf

COMMANDS = {
    "llama_cpp": "cardforge.serve.launchers.llama_cpp:llama_server_command",
    "vllm": "cardforge.serve.launchers.vllm:vllm_command",
    "sglang": "cardforge.serve.launchers.sglang:sglang_command",
}
# where each engine says it is ready (all answer 200 when the model is loaded)
HEALTH_PATHS = {"llama_cpp": "/health", "vllm": "/health", "sglang": "/health"}


def _plain(value: Any) -> Any:
    """A DictConfig / dataclass / mapping as plain dicts and lists, enums as their values."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, Enum) else value


def _over(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _over(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@functools.lru_cache(maxsize=4)
def _defaults(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]


def settings(serve: Any) -> dict[str, Any]:
    """`serve` as a plain dict over conf/defaults/serve.yaml: every serve key present, whatever the caller gave."""
    from cardforge.core.paths import conf_dir

    return _over(copy.deepcopy(_defaults(conf_dir() / "defaults" / "serve.yaml")), _plain(serve) or {})


def option(serve: Any, key: str) -> Any:
    """One serve value (`mtp.n_max` for a nested one) from the composed config or a partial mapping."""
    value: Any = settings(serve)
    for part in key.split("."):
        value = value[part]
    return value


def backend_name(serve: Any) -> str:
    return str(option(serve, "backend"))


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


# rope scalings whose factor lengthens the usable context beyond max_position_embeddings (vLLM derives its limit
# the same way); llama3 / longrope configs already state the extended length
_EXTENDING_ROPE = ("linear", "dynamic", "yarn")


def context_limit(config: Mapping | None) -> int | None:
    """The longest context a checkpoint's config.json allows: max_position_embeddings (its text_config's in a
    vision-language config), times the rope_scaling factor where that scaling extends it; None when it says
    nothing (or there is no config)."""
    if not config:
        return None
    text = config.get("text_config") or {}
    n = text.get("max_position_embeddings") or config.get("max_position_embeddings")
    if not n:
        return None
    rope = text.get("rope_scaling") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type")
    return int(n * float(rope["factor"])) if kind in _EXTENDING_ROPE and rope.get("factor") else int(n)


def local_config(model: str | Path) -> dict | None:
    """config.json of a local checkpoint directory; None for an HF id, a GGUF or a directory without one."""
    path = Path(str(model)) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fit_max_model_len(value: int, config: Mapping | None, source: str) -> int:
    """serve.max_model_len, lowered to what the model allows (`context_limit(config)`; `source` names where the
    config came from) with a note on stderr. The default (conf/defaults/serve.yaml, sized for the 27B card) is
    longer than a small model's context (SmolLM2: 8192), and vLLM / SGLang refuse a length past the model's."""
    limit = context_limit(config)
    if limit is None or int(value) <= limit:
        return int(value)
    print(f"[serve] serve.max_model_len={value} is longer than the model's context ({limit}, max_position_embeddings "
          f"in {source}): using {limit}", file=sys.stderr)
    return limit


def max_model_len(serve: Any, model: str | Path) -> int:
    """The context length the vLLM / SGLang command asks for: serve.max_model_len, at most the served local
    checkpoint's own limit (an HF id is left to the engine)."""
    return fit_max_model_len(option(serve, "max_model_len"), local_config(model), f"{model}/config.json")


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
    s = settings(serve)
    return command_builder(str(s["backend"]))(
        model, s, host=host or s["host"], port=int(port if port is not None else s["port"]), exe=exe)
