"""Each GGUF tier must load in llama-server and answer: start it, ask one short question, stop it."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cardforge.core.errors import UserError


def ask(base_url: str, max_tokens: int = 8) -> dict:
    body = json.dumps({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request(f"{base_url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def check_all(cfg: DictConfig, results: dict) -> None:
    from cardforge.serve.launchers.llama_cpp import llama_server

    serve = OmegaConf.to_container(cfg.serve, resolve=True, enum_to_str=True)
    serve["mtp"]["enabled"] = bool(serve["mtp"]["enabled"] and cfg.model.has_mtp)
    for key, info in results.items():
        path = Path(info["path"])
        if path.suffix != ".gguf":
            continue
        t0 = time.perf_counter()
        try:
            with llama_server(path, serve, log_path=path.parent.parent / "logs" / f"load-{key}.log") as srv:
                reply = ask(srv.base_url)
        except Exception as e:  # noqa: BLE001 - any failure to load is this file's verdict
            raise UserError(f"{path.name} does not load in llama-server: {str(e).splitlines()[0]}") from e
        timings = reply.get("timings", {})
        info["load_ok"] = bool(reply.get("choices"))
        info["load_seconds"] = round(time.perf_counter() - t0, 2)
        if "draft_n" in timings:
            info["draft_n"] = timings["draft_n"]
            info["draft_n_accepted"] = timings.get("draft_n_accepted", 0)
