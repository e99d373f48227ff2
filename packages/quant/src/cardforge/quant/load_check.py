"""Each GGUF tier must load in llama-server and answer: start it, ask one short question, stop it.

`check_one` is one file (the stage runs several side by side, see cardforge.quant.schedule).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cardforge.core.errors import UserError
from cardforge.quant.schedule import add_child_cpu


def ask(base_url: str, max_tokens: int = 8) -> dict:
    body = json.dumps({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request(f"{base_url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def tiny_png(width: int = 64, height: int = 48) -> bytes:
    """A small RGB PNG (a colour gradient), written with zlib only: the image of the vision check."""
    import struct
    import zlib

    rows = b"".join(b"\x00" + b"".join(bytes((x * 4 % 256, y * 5 % 256, (x + y) * 3 % 256)) for x in range(width))
                    for y in range(height))  # filter byte 0, then RGB per pixel

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def ask_image(base_url: str, png: bytes | None, max_tokens: int = 8) -> dict:
    """One /v1/chat/completions request with the image as a data: URL (OpenAI image_url content part);
    png=None asks the same text without it."""
    import base64

    content = [{"type": "text", "text": "What is in the image?"}]
    if png is not None:
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    body = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request(f"{base_url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def check_vision(serve: dict, text_gguf: Path, mmproj: Path, log_path: Path) -> dict:
    """llama-server on the text GGUF + its vision projector answers one image request; the image's tokens show
    in the prompt count (the same question without the image, asked of the same server, has fewer tokens)."""
    from cardforge.serve.launchers.llama_cpp import llama_server

    t0 = time.perf_counter()
    try:
        with llama_server(text_gguf, serve, log_path=log_path, extra_args=["--mmproj", str(mmproj)]) as srv:
            with_image = ask_image(srv.base_url, tiny_png())
            text_only = ask_image(srv.base_url, None)
            add_child_cpu(_process_cpu(srv.pid))
    except Exception as e:  # noqa: BLE001 - any failure to load or answer is the verdict
        raise UserError(f"{Path(text_gguf).name} + {Path(mmproj).name} do not answer an image request in "
                        f"llama-server: {str(e).splitlines()[0]}") from e
    image_prompt = with_image.get("usage", {}).get("prompt_tokens", 0)
    text_prompt = text_only.get("usage", {}).get("prompt_tokens", 0)
    if not with_image.get("choices") or image_prompt <= text_prompt:
        raise UserError(f"{Path(text_gguf).name} + {Path(mmproj).name}: llama-server answered the image request "
                        f"without the image ({image_prompt} prompt tokens, {text_prompt} without it; see {log_path})")
    return {"vision_ok": True,
            "vision_prompt_tokens": image_prompt, "text_prompt_tokens": text_prompt,
            "vision_seconds": round(time.perf_counter() - t0, 2)}


def serve_options(cfg: DictConfig, threads: int | None = None) -> dict:
    """cfg.serve as a dict, MTP speculation on where the model has a head; `threads` overrides serve.threads."""
    serve = OmegaConf.to_container(cfg.serve, resolve=True, enum_to_str=True)
    serve["mtp"]["enabled"] = bool(serve["mtp"]["enabled"] and cfg.model.has_mtp)
    if threads:
        serve["threads"] = threads
    return serve


def check_one(serve: dict, path: Path, log_path: Path) -> dict:
    """Start llama-server on `path`, ask one question; load_ok, load_seconds and the draft counters."""
    from cardforge.serve.launchers.llama_cpp import llama_server

    t0 = time.perf_counter()
    try:
        with llama_server(path, serve, log_path=log_path) as srv:
            reply = ask(srv.base_url)
            add_child_cpu(_process_cpu(srv.pid))
    except Exception as e:  # noqa: BLE001 - any failure to load is this file's verdict
        raise UserError(f"{Path(path).name} does not load in llama-server: {str(e).splitlines()[0]}") from e
    timings = reply.get("timings", {})
    info = {"load_ok": bool(reply.get("choices")), "load_seconds": round(time.perf_counter() - t0, 2)}
    if "draft_n" in timings:
        info["draft_n"] = timings["draft_n"]
        info["draft_n_accepted"] = timings.get("draft_n_accepted", 0)
    return info


def _process_cpu(pid: int | None) -> float:
    """CPU seconds a live process has used so far (all its threads), from /proc; 0 where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def log_path(out: Path, key: str) -> Path:
    return Path(out) / "logs" / f"load-{key.replace(':', '_')}.log"

