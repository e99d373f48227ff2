"""The serve stage: `python -m cardforge.serve [overrides]` -> run(cfg).

llama_cpp: start llama-server (MTP speculation per serve.mtp), run the start check (probe accept rate,
warn + MLflow tag when an expected MTP head is unused or never accepted), then serve until Ctrl-C
(serve.keep_running=false: stop after the check). vllm / sglang: build the same config's command for the
distilled model (serve.model_path, the card's repo, or the merged/released checkpoint; never the base) and
run it where the engine is installed (the `vllm` executable on PATH; `sglang` importable), logging to
<outputs>/serve/<backend>.log; elsewhere print it and exit 0 with a note.

Anthropic Messages API (Claude Code): every engine serves /v1/messages and /v1/messages/count_tokens on its
own port (llama-server since llama.cpp PR 17570, vLLM's and SGLang's Anthropic entrypoints). With
serve.anthropic.guard=true (default) the stage also starts our guard in front of that native endpoint
(cardforge.serve.anthropic: Anthropic's validation and the gaps measured in docs/serving.md) and prints
`ANTHROPIC_BASE_URL=<guard>`; serve.json and the MLflow tags record both URLs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shlex
import shutil
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.core.artifacts import Outputs
from cardforge.serve.commands import (
    inference_commands, local_model, merged_model_dir, published_repo, released_model_dir,
)
from cardforge.serve.launchers import HEALTH_PATHS, backend_name, build_command, option, served_name
from cardforge.serve.speculation import SpecProbe, SpecVerdict, assess, log, probe

ENGINES = {"vllm": "vllm", "sglang": "sglang"}  # backend -> the Python module that must be importable


@dataclass
class ServeResult:
    backend: str
    command: list[str]
    ran: bool
    base_url: str | None = None
    startup_s: float | None = None
    probe: SpecProbe | None = None
    verdict: SpecVerdict | None = None
    log_path: str | None = None
    commands: dict[str, str] = field(default_factory=dict)
    served_models: list[str] = field(default_factory=list)  # vllm / sglang: what /v1/models listed
    anthropic: dict[str, Any] = field(default_factory=dict)  # native / guard Messages API URLs


@contextlib.contextmanager
def anthropic_endpoint(cfg: DictConfig, engine_url: str, out_dir: Path, model: str | None = None):
    """The Anthropic Messages API of a running engine: its native URL, and our guard in front of it when
    serve.anthropic.guard (a managed subprocess, stopped with the block). Yields the record for serve.json."""
    import os

    opts = cfg.serve.anthropic
    info: dict[str, Any] = {"native_base_url": engine_url, "native_messages": engine_url + "/v1/messages",
                            "native_count_tokens": engine_url + "/v1/messages/count_tokens", "guard": None}
    if not opts.guard:
        _say(f"Anthropic Messages API (engine's own): ANTHROPIC_BASE_URL={engine_url}")
        info["base_url"] = engine_url
        yield info
        return
    from cardforge.serve.anthropic.launch import anthropic_bridge

    key_env = opts.api_key_env
    key = os.environ.get(str(key_env)) if key_env else None
    if key_env and not key:
        from cardforge.core.errors import UserError

        raise UserError(f"serve.anthropic.api_key_env={key_env}: that variable is not set (set it, or "
                        "serve.anthropic.api_key_env=null for an open guard on 127.0.0.1)")
    with anthropic_bridge(engine_url, host=str(cfg.serve.host),
                          port=int(opts.port or 0), api_key=key, model=model,
                          log_path=out_dir / "anthropic-guard.log") as guard:
        info.update(guard=guard.base_url, base_url=guard.base_url, guard_pid=guard.pid,
                    guard_log=str(out_dir / "anthropic-guard.log"))
        _say(f"Anthropic Messages API for Claude Code: ANTHROPIC_BASE_URL={guard.base_url} (our guard in front "
             f"of the engine's native {engine_url}/v1/messages)")
        yield info


def serve_options(cfg: DictConfig) -> dict[str, Any]:
    """cfg.serve as a dict; the served name defaults to model.name unless serve.model_path points elsewhere
    (then the launcher derives it from that path)."""
    serve = OmegaConf.to_container(cfg.serve, resolve=True, enum_to_str=True)
    if not serve.get("served_model_name") and not serve.get("model_path"):
        serve["served_model_name"] = cfg.model.name
    return serve


def _say(msg: str) -> None:
    print(f"cardforge serve: {msg}", file=sys.stderr, flush=True)


def resolve_gguf(cfg: DictConfig) -> Path:
    """serve.model_path if it is a GGUF; else that HF dir (or model.path) converted once to BF16 GGUF."""
    from cardforge.core.llama_cpp import convert_hf_to_gguf

    src = cfg.serve.model_path
    if src and str(src).endswith(".gguf"):
        from cardforge.core.io import check_gguf

        return check_gguf(src, "serve.model_path")  # missing, not GGUF, torn or truncated: one line with the fix
    if not src:
        if cfg.model.embedded:
            from cardforge.core.models import prepare

            src = prepare(cfg.model.name)
        else:
            src = cfg.model.path
    if not Path(src).is_dir():
        from cardforge.core.errors import UserError

        key = "serve.model_path" if cfg.serve.model_path else "model.path"
        raise UserError(f"{key}={src}: {'a file, not a folder' if Path(src).exists() else 'no such folder'}; set "
                        f"serve.model_path to a .gguf file or a local HF checkpoint folder (config.json + "
                        "*.safetensors) for backend=llama_cpp")
    out = Outputs(cfg).serve.dir / f"{Path(src).name}-bf16.gguf"
    if not out.is_file():
        _say(f"converting {src} -> {out} (BF16, once)")
        convert_hf_to_gguf(src, out, outtype="bf16")
    return out


def has_vision_tower(model_dir: str | Path) -> bool:
    """An HF checkpoint whose config.json carries a vision tower (Qwen3.5/3.6's unified VL layout)."""
    cfg_file = Path(model_dir) / "config.json"
    try:
        return bool(json.loads(cfg_file.read_text()).get("vision_config"))
    except (OSError, ValueError):
        return False


def resolve_mmproj(cfg: DictConfig, gguf: Path) -> Path | None:
    """The vision projector llama-server needs for image requests (`--mmproj`), or None for a text-only model.

    serve.mmproj: a path (checked), null (text only) or auto: for a GGUF passed as serve.model_path, the
    `mmproj-*.gguf` beside it (where the quant stage writes it, llama.cpp's naming convention); for an HF dir
    with a vision tower (converted here to GGUF), its projector, converted once beside the text GGUF."""
    choice = cfg.serve.mmproj
    if choice is None or str(choice).lower() in {"null", "none", "off", "false"}:
        return None
    if str(choice) != "auto":
        from cardforge.core.io import check_gguf

        return check_gguf(choice, "serve.mmproj")
    src = cfg.serve.model_path
    if src and str(src).endswith(".gguf"):
        found = sorted(p for p in Path(src).parent.glob("mmproj*.gguf") if p.is_file())
        if len(found) > 1:
            _say(f"several vision projectors beside {Path(src).name}: using {found[0].name}")
        return found[0] if found else None
    model_dir = src or (None if cfg.model.embedded else cfg.model.path)
    if model_dir is None:
        from cardforge.core.models import prepare

        model_dir = prepare(cfg.model.name)
    if not has_vision_tower(model_dir):
        return None
    from cardforge.core.llama_cpp import convert_hf_to_gguf

    out = gguf.parent / f"mmproj-{Path(model_dir).name}-BF16.gguf"
    if not out.is_file():
        _say(f"converting the vision projector of {model_dir} -> {out} (once)")
        convert_hf_to_gguf(model_dir, out, outtype="bf16", extra_args=["--mmproj"])
    return out


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM; both end in a clean stop (the callers' finally blocks run)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        # a process started in the background of a non-interactive shell inherits SIGINT ignored, and Python then
        # never raises KeyboardInterrupt: Ctrl-C (SIGINT) must stop the server however the stage was started
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _say("serving; Ctrl-C stops it")  # inside the try: a Ctrl-C right after this line is still clean
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("stopping")


def _start_check(cfg: DictConfig, base_url: str) -> tuple[SpecProbe | None, SpecVerdict]:
    mtp = cfg.serve.mtp
    result = None
    if cfg.model.has_mtp and mtp.enabled:
        result = probe(base_url, max_tokens=int(mtp.probe_tokens))
    verdict = assess(result, has_mtp=bool(cfg.model.has_mtp), mtp_enabled=bool(mtp.enabled),
                     min_accept_rate=float(mtp.min_accept_rate))
    (log.warning if verdict.warn else log.info)("MTP check: %s: %s", verdict.status, verdict.message)
    if verdict.warn:
        _say(f"WARNING: {verdict.message}")
    return result, verdict


def _run_llama_cpp(cfg: DictConfig, result: ServeResult) -> ServeResult:
    import mlflow

    from cardforge.core.io import atomic_write_json
    from cardforge.serve.launchers.llama_cpp import llama_server

    out_dir = Outputs(cfg).serve.dir
    gguf = resolve_gguf(cfg)
    serve = serve_options(cfg)
    mmproj = resolve_mmproj(cfg, gguf)
    serve["mmproj"] = str(mmproj) if mmproj is not None else None
    log_path = out_dir / "llama-server.log"
    log_path.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(llama_server(gguf, serve, log_path=log_path))
        result.command, result.ran, result.base_url = srv.command, True, srv.base_url
        result.startup_s, result.log_path = srv.startup_s, str(log_path)
        _say(f"llama-server ready at {srv.base_url} in {srv.startup_s:.1f} s (log: {log_path})")
        mlflow.log_metric("serve.startup_s", srv.startup_s)
        anthropic = stack.enter_context(anthropic_endpoint(cfg, srv.base_url, out_dir))
        result.anthropic = {k: v for k, v in anthropic.items() if k != "guard_pid"}
        result.probe, result.verdict = _start_check(cfg, srv.base_url)
        tags = {"serve.backend": "llama_cpp", "serve.mtp_check": result.verdict.status,
                "serve.command": shlex.join(srv.command)[:5000],
                "serve.anthropic_base_url": str(anthropic.get("base_url"))}
        if result.verdict.warn:
            tags["serve.mtp_warning"] = result.verdict.message[:5000]
        mlflow.set_tags(tags)
        if result.probe:
            mlflow.log_metrics(result.probe.metrics())
        atomic_write_json(out_dir / "serve.json", {
            "backend": "llama_cpp", "model": str(gguf), "command": srv.command, "pid": srv.pid, "base_url": srv.base_url,
            "startup_s": srv.startup_s, "probe": asdict(result.probe) if result.probe else None,
            "accept_rate": result.probe.accept_rate if result.probe else None,
            "mtp_check": asdict(result.verdict), "inference_commands": result.commands, "anthropic": anthropic})
        mlflow.log_artifact(str(out_dir / "serve.json"), "serve")
        if cfg.serve.keep_running:
            _wait_for_interrupt()
    mlflow.log_artifact(str(log_path), "serve")
    if (out_dir / "anthropic-guard.log").is_file():
        mlflow.log_artifact(str(out_dir / "anthropic-guard.log"), "serve")
    return result


def _served_models(base_url: str) -> list[str]:
    """The model ids an OpenAI-compatible server lists at /v1/models ([] when it cannot say)."""
    try:
        with urllib.request.urlopen(base_url + "/v1/models", timeout=30) as resp:
            data = json.loads(resp.read()).get("data") or []
    except (OSError, ValueError, AttributeError) as e:
        _say(f"WARNING: GET {base_url}/v1/models failed: {e}")
        return []
    return [str(m.get("id")) for m in data if isinstance(m, dict)]


def engine_installed(backend: str, command: list[str]) -> bool:
    """vLLM: its `vllm` executable is on PATH (what the command runs); SGLang: `sglang` is importable here."""
    if backend == "vllm":
        return shutil.which(command[0]) is not None
    return importlib.util.find_spec(ENGINES[backend]) is not None


def engine_model(cfg: DictConfig) -> tuple[str, bool]:
    """(what vLLM/SGLang serve, whether it is known to exist): serve.model_path, else the card's published
    repo, else the distilled checkpoint here (released main dir, else merge output); never model.path."""
    given = cfg.serve.model_path or published_repo(cfg)
    if given:
        return str(given), True
    local = local_model(cfg)
    return (str(local), True) if local else (str(released_model_dir(cfg)), False)


def _run_engine(cfg: DictConfig, backend: str, result: ServeResult) -> ServeResult:
    """vLLM / SGLang: run the exact command when the engine is installed, else print it (exit 0)."""
    from cardforge.core import tracking
    from cardforge.core.errors import UserError
    from cardforge.serve.process import managed_server

    model, found = engine_model(cfg)
    serve = serve_options(cfg)
    if not serve.get("port") and engine_installed(backend, build_command(model, serve)):
        from cardforge.serve.process import free_port

        serve["port"] = free_port(serve["host"])  # port 0: the engine must be told a concrete one to be found
    result.command = build_command(model, serve)
    print(shlex.join(result.command), flush=True)
    if not engine_installed(backend, result.command):
        _say(f"{backend} is not installed here (pip install 'cardforge-serve[{backend}]' on a GPU host); "
             "printed the command it would run, nothing was started")
        return result
    if not found:
        raise UserError(f"no distilled model to serve: neither {released_model_dir(cfg)} nor "
                        f"{merged_model_dir(cfg)} holds a checkpoint; run `make merge` (or `make release`), or "
                        "pass serve.model_path=DIR_OR_HF_ID (the base model is never served by default)")
    log_path = Outputs(cfg).serve.log(backend)
    log_path.unlink(missing_ok=True)
    result.log_path = str(log_path)
    with tracking.stage_run(cfg, "serve"):
        import mlflow

        try:
            with managed_server(result.command, host=serve["host"], port=int(serve["port"]), log_path=log_path,
                                timeout_s=float(serve["startup_timeout_s"]),
                                health_path=HEALTH_PATHS[backend]) as srv:
                result.ran, result.base_url, result.startup_s = True, srv.base_url, srv.startup_s
                result.served_models = _served_models(srv.base_url)
                name = served_name(serve, model)
                if name not in result.served_models:
                    _say(f"WARNING: {backend} lists models {result.served_models}, not {name!r}: clients asking "
                         "for that name will get 404")
                _say(f"{backend} ready at {srv.base_url} in {srv.startup_s:.0f} s (log: {log_path})")
                # Claude Code sends claude-* model names: the guard asks the engine for the served one
                with anthropic_endpoint(cfg, srv.base_url, log_path.parent, model=name) as anthropic:
                    result.anthropic = {k: v for k, v in anthropic.items() if k != "guard_pid"}
                    mlflow.set_tags({"serve.backend": backend, "serve.command": shlex.join(result.command)[:5000],
                                     "serve.served_models": ",".join(result.served_models)[:5000],
                                     "serve.anthropic_base_url": str(anthropic.get("base_url"))})
                    mlflow.log_metric("serve.startup_s", srv.startup_s)
                    if cfg.serve.keep_running:
                        _wait_for_interrupt()
        finally:
            if log_path.is_file():
                mlflow.log_artifact(str(log_path), "serve")
    return result


def run(cfg: DictConfig) -> ServeResult:
    backend = backend_name(cfg.serve)
    result = ServeResult(backend=backend, command=[], ran=False, commands=inference_commands(cfg))
    if backend in ENGINES:
        return _run_engine(cfg, backend, result)
    from cardforge.core import tracking

    with tracking.stage_run(cfg, "serve"):
        import mlflow

        mlflow.log_text(json.dumps(result.commands, indent=2), "serve/inference_commands.json")
        return _run_llama_cpp(cfg, result)
