"""The inference command per backend, for the README and the model card:
`inference_commands(cfg) -> {"llama_cpp": "llama-server ...", "vllm": "vllm serve ...", "sglang": "..."}`.

All three come from the same `serve` section; only the backend-specific keys (tool parser, port) differ,
taken from conf/serve/<backend>.yaml so each line is what `serve=<backend>` would run.
"""

from __future__ import annotations

import shlex
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.serve.launchers import COMMANDS, build_command

BACKEND_CONFIGS = {"llama_cpp": "llama_cpp", "vllm": "vllm", "sglang": "sglang"}  # backend -> conf/serve/*.yaml


def _serve_for(cfg: DictConfig, backend: str) -> Any:
    """cfg.serve with conf/serve/<backend>.yaml's backend-specific keys laid over it."""
    from cardforge.core import paths

    serve = OmegaConf.to_container(cfg.serve, resolve=True, enum_to_str=True)
    group = OmegaConf.to_container(OmegaConf.load(paths.conf_dir() / "serve" / f"{BACKEND_CONFIGS[backend]}.yaml"))
    if str(serve["backend"]) != backend:
        for key in ("backend", "port", "tool_call_parser", "reasoning_parser"):
            if key in group:
                serve[key] = group[key]
    serve["backend"] = backend
    serve["served_model_name"] = serve.get("served_model_name") or cfg.model.name
    return serve


def model_ref(cfg: DictConfig, backend: str, gguf_name: str | None = None) -> str:
    """What the published command points at: the GGUF file for llama.cpp, the HF repo/dir otherwise."""
    given = cfg.serve.get("model_path")
    if given and str(given).endswith(".gguf") == (backend == "llama_cpp"):  # a GGUF only fits llama.cpp
        return str(given)
    if backend == "llama_cpp":
        return gguf_name or f"{cfg.model.name}-Q4_K_M.gguf"
    repo = OmegaConf.select(cfg, "card.hf_repo")
    return repo or str(cfg.model.path)


def inference_commands(cfg: DictConfig, gguf_name: str | None = None) -> dict[str, str]:
    out = {}
    for backend in COMMANDS:
        serve = _serve_for(cfg, backend)
        if backend == "llama_cpp" and not serve.get("port"):
            serve["port"] = 8080  # a published command needs a concrete port
        out[backend] = shlex.join(build_command(model_ref(cfg, backend, gguf_name), serve))
    return out


def render_markdown(commands: dict[str, str]) -> str:
    names = {"llama_cpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang"}
    return "\n".join(f"{names.get(k, k)}:\n\n```bash\n{v}\n```\n" for k, v in commands.items())
