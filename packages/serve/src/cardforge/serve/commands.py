"""The inference command per backend, for the README and the model card:
`inference_commands(cfg) -> {"llama_cpp": "llama-server ...", "vllm": "vllm serve ...", "sglang": "..."}`.

All three come from the same `serve` section; only the backend-specific keys (tool parser, port) differ,
taken from conf/serve/<backend>.yaml so each line is what `serve=<backend>` would run.

What the vLLM / SGLang lines serve is the DISTILLED model, never the base (`model.path`): serve.model_path
when given, else the card's published repo (card.hf_repo / release.repos.main.hf, or
<release.hf_namespace>/<release.name or card.title>), else the directory `make release` assembles the main repo in
(<release.out_dir or paths.outputs/release>/main: the merged checkpoint + card), shown relative to the
checkout when it lies inside it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.core.artifacts import Outputs
from cardforge.serve.launchers import COMMANDS, build_command, fit_max_model_len, local_config

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
    serve["served_model_name"] = serve["served_model_name"] or release_model_name(cfg)
    return serve


def release_model_name(cfg: DictConfig) -> str:
    """The name clients see for the published model: the release repo's name (card.hf_repo / release.name /
    card.title), not the base's: the distilled model must not answer as Qwen3.6-27B."""
    repo = published_repo(cfg)
    name = repo.rsplit("/", 1)[-1] if repo else (OmegaConf.select(cfg, "release.name")
                                                 or OmegaConf.select(cfg, "card.title"))
    return str(name or cfg.model.name)


def published_repo(cfg: DictConfig) -> str | None:
    """The main repo id the release publishes (conf/release.yaml's rule), or None when none is configured."""
    given = OmegaConf.select(cfg, "release.repos.main.hf") or OmegaConf.select(cfg, "card.hf_repo")
    if given:
        return str(given)
    ns = OmegaConf.select(cfg, "release.hf_namespace")
    name = OmegaConf.select(cfg, "release.name") or OmegaConf.select(cfg, "card.title")
    return f"{ns}/{name}" if ns and name else None


def released_model_dir(cfg: DictConfig) -> Path:
    """<release.out_dir>/main (default <paths.outputs>/release/main): the merged distilled checkpoint as
    `make release` assembles it (cardforge.card.release)."""
    return Outputs(cfg).release / "main"


def merged_model_dir(cfg: DictConfig) -> Path:
    """<paths.outputs>/merge/model: where the merge stage writes the merged BF16 checkpoint."""
    return Outputs(cfg).merge.model


def _shown(path: Path, cfg: DictConfig) -> str:
    """A path for a published command: ./relative when inside the checkout (no machine-specific prefix)."""
    root = OmegaConf.select(cfg, "paths.root")
    if root:
        rel = os.path.relpath(Path(path).absolute(), Path(root).absolute())
        if not rel.startswith(".."):
            return "./" + Path(rel).as_posix()
    return str(path)


def local_model(cfg: DictConfig) -> Path | None:
    """The distilled checkpoint on this machine: the released main dir, else the merge output; None if neither."""
    for path in (released_model_dir(cfg), merged_model_dir(cfg)):
        if (path / "config.json").is_file():
            return path
    return None


def model_ref(cfg: DictConfig, backend: str, gguf_name: str | None = None) -> str:
    """What the published command points at: the GGUF file for llama.cpp; for vLLM/SGLang the distilled
    model (serve.model_path, else the published repo, else the released model dir), never model.path."""
    given = cfg.serve.model_path
    if given and str(given).endswith(".gguf") == (backend == "llama_cpp"):  # a GGUF only fits llama.cpp
        return str(given)
    if backend == "llama_cpp":
        return gguf_name or f"{cfg.model.name}-Q4_K_M.gguf"
    return published_repo(cfg) or _shown(released_model_dir(cfg), cfg)


def distilled_config(cfg: DictConfig) -> tuple[dict | None, str]:
    """The distilled model's config.json (and where it was read), for the vLLM / SGLang context length: the
    released / merged checkpoint on this machine, else the base's (the merge keeps its config: model.path when it
    is on this machine, the real Qwen3.6-27B's by name); (None, "") when none is known."""
    from cardforge.core.models import layout

    local = local_model(cfg)
    if local is not None:
        return local_config(local), str(local / "config.json")
    config = layout.known_config(cfg.model)
    if not config:
        return None, ""
    base = Path(str(cfg.model.path or "")) / "config.json"
    return config, str(base) if base.is_file() else f"the known config of {cfg.model.name}"


def inference_commands(cfg: DictConfig, gguf_name: str | None = None) -> dict[str, str]:
    out = {}
    # what the commands serve may not be on this machine (a repo id, the release dir before `make release`): the
    # context length is checked against the distilled model's config here
    max_len = fit_max_model_len(cfg.serve.max_model_len, *distilled_config(cfg))
    for backend in COMMANDS:
        serve = _serve_for(cfg, backend)
        serve["max_model_len"] = max_len
        if backend == "llama_cpp" and not serve["port"]:
            serve["port"] = 8080  # a published command needs a concrete port
        out[backend] = shlex.join(build_command(model_ref(cfg, backend, gguf_name), serve))
    return out
