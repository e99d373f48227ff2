"""Async streaming client for any OpenAI-compatible /v1/chat/completions endpoint (aiohttp, SSE).

Why our own client (docs/evaluation.md): a non-streaming client waits for the whole answer and a long
thought looks like a timeout; lm-eval's local-chat-completions also drops finish_reason, usage and
reasoning_content and aborts the run when one request runs out of retries. Here:

* one `complete()` call never raises for a request problem: HTTP errors, timeouts, a stream that ends
  without a finish_reason (dropped connection) and unparseable chunks are retried `retries` times, then
  returned as a `Completion` with `finish_reason="error"` and the last `error` message;
* reasoning and answer are kept apart: the `reasoning_content` delta field when the server splits it
  (llama-server, vLLM --reasoning-parser), else the <think> block via `cardforge.core.chat.parse_assistant`;
* latency, time to first token, usage and llama-server `timings` (draft_n / draft_n_accepted: only in the
  last chunk before [DONE]) are recorded per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from cardforge.core.chat import parse_assistant

RETRY_BACKOFF_S = 0.5  # doubled per attempt: a restarting server gets a moment, a test stays fast


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 32768
    seed: int | None = None
    stop: tuple[str, ...] = ()
    thinking: bool = True  # sent as chat_template_kwargs.enable_thinking (Qwen3 templates read it)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p,
                               "max_tokens": self.max_tokens,
                               "chat_template_kwargs": {"enable_thinking": self.thinking}}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop:
            out["stop"] = list(self.stop)
        return out


@dataclass
class Completion:
    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None  # stop | length | error (ours: no finish_reason after all retries)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    timings: dict | None = None
    error: str | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)  # one line per failed attempt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamError(Exception):
    """One attempt failed in a way a retry may fix (HTTP status, dropped stream, bad chunk, timeout)."""


async def _one_attempt(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float,
                       headers: dict[str, str]) -> Completion:
    out = Completion()
    content, reasoning = [], []
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(url, json=body, timeout=timeout, headers=headers) as resp:
        if resp.status != 200:
            text = (await resp.text())[:200].replace("\n", " ")
            raise StreamError(f"HTTP {resp.status}: {text}")
        done = False
        buf = b""
        async for raw in resp.content:  # aiohttp yields lines
            buf += raw
            if not buf.endswith(b"\n"):
                continue
            line, buf = buf.decode("utf-8", "replace").strip(), b""
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                raise StreamError(f"invalid JSON chunk: {data[:80]!r}") from None
            if "error" in chunk:
                raise StreamError(f"server error in stream: {str(chunk['error'])[:200]}")
            if chunk.get("timings"):
                out.timings = chunk["timings"]
            if chunk.get("usage"):
                out.prompt_tokens = chunk["usage"].get("prompt_tokens")
                out.completion_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                piece_r = delta.get("reasoning_content") or delta.get("reasoning") or ""
                piece_c = delta.get("content") or ""
                if (piece_r or piece_c) and out.ttft_s is None:
                    out.ttft_s = time.monotonic() - t0
                reasoning.append(piece_r)
                content.append(piece_c)
                if choice.get("finish_reason"):
                    out.finish_reason = choice["finish_reason"]
        if out.finish_reason is None:
            how = "after [DONE]" if done else "(connection closed mid-answer)"
            raise StreamError(f"stream ended without a finish_reason {how}")
    out.latency_s = time.monotonic() - t0
    out.content, out.reasoning = "".join(content), "".join(reasoning)
    return out


def split_reasoning(c: Completion, *, think_open: bool = False) -> Completion:
    """Move a <think> block out of `content` when the server did not split it (no reasoning parser)."""
    if c.reasoning or ("</think>" not in c.content and "<think>" not in c.content and not think_open):
        return c
    parsed = parse_assistant(c.content, think_open=think_open)
    c.reasoning, c.content = parsed.reasoning, parsed.content
    return c


async def complete(session: aiohttp.ClientSession, base_url: str, messages: list[dict], sampling: Sampling, *,
                   timeout_s: float, retries: int, model: str | None = None, api_key: str | None = None,
                   think_open: bool = False) -> Completion:
    """One chat completion, streamed; never raises for request failures (see the module docstring)."""
    body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True}, **sampling.body()}
    if model:
        body["model"] = model
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    errors: list[str] = []
    for attempt in range(retries + 1):
        try:
            result = await _one_attempt(session, url, body, timeout_s, headers)
            result.attempts, result.errors = attempt + 1, errors
            return split_reasoning(result, think_open=think_open)
        except asyncio.TimeoutError:
            errors.append(f"timeout after {timeout_s:g} s")
        except StreamError as e:
            errors.append(str(e))
        except Exception as e:  # noqa: BLE001 - anything else a server can provoke is recorded, never raised
            errors.append(f"{type(e).__name__}: {e}"[:300])
        if attempt < retries:
            await asyncio.sleep(RETRY_BACKOFF_S * 2 ** attempt)
    return Completion(finish_reason="error", error=errors[-1], attempts=retries + 1, errors=errors)


def new_session(concurrency: int) -> aiohttp.ClientSession:
    # one connection per concurrent request; no total timeout here (per request, in complete())
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(1, concurrency)),
                                 timeout=aiohttp.ClientTimeout(total=None))
