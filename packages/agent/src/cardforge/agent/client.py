"""THE client for every OpenAI-compatible /v1/chat/completions endpoint we talk to: the teacher (data stage),
the judge and simulator, and the evaluated model (eval stage). Streaming SSE over httpx2 (maintained httpx),
under our own never-raise, retry-on-break wrapper.

Why our own wrapper (docs/evaluation.md): a non-streaming client waits for the whole answer and a long
thought looks like a timeout; lm-eval's local-chat-completions also drops finish_reason, usage and
reasoning_content and aborts the run when one request runs out of retries. Here:

* one `complete()` call never raises for a request problem: HTTP errors, timeouts, a stream that ends
  without a finish_reason (dropped connection) and unparseable chunks are retried `retries` times, then
  returned as a `Completion` with `finish_reason="error"` and the last `error` message. A client error
  that no retry can fix (400/401/403/404/422) is not retried;
* two clocks: `idle_timeout_s` is silence (no byte for that long: a dead or wedged server), `timeout_s` is
  the request's total cap (the card's 1800 s). A slow but healthy stream of a long thought keeps sending,
  so it is never cut by the idle clock, however long it runs under the cap;
* 429 / 503 with `Retry-After` (seconds or an HTTP date) wait that long (at most RETRY_AFTER_MAX_S); every
  other retry backs off exponentially with jitter (RETRY_BACKOFF_S * 2**attempt * U(0.5, 1.5));
* `Session(concurrency)` caps requests in flight (a semaphore around every attempt, and the connection
  pool's size);
* tokens per request: prompt, completion, and reasoning (the usage's `completion_tokens_details.
  reasoning_tokens` when the server reports it, else the number of streamed reasoning chunks: llama-server
  and vLLM send one token per chunk); `Price` turns them into money (per million tokens in / out);
* reasoning and answer are kept apart: the `reasoning_content` delta field when the server splits it
  (llama-server, vLLM --reasoning-parser), else the <think> block via `cardforge.core.chat.parse_assistant`;
* latency, time to first token, usage and llama-server `timings` (draft_n / draft_n_accepted: only in the
  last chunk before [DONE]) are recorded per request.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx2

from cardforge.core.chat import parse_assistant

RETRY_BACKOFF_S = 0.5  # base of the exponential backoff: a restarting server gets a moment, a test stays fast
RETRY_AFTER_MAX_S = 600.0  # a Retry-After longer than this is capped (the run must go on)
IDLE_TIMEOUT_S = 300.0  # default silence limit: long enough for a 32k-token prefill on a busy paid endpoint
CONNECT_TIMEOUT_S = 30.0
RETRY_AFTER_STATUSES = (429, 503)
NO_RETRY_STATUSES = (400, 401, 403, 404, 405, 413, 422)  # the same request fails the same way again


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


@dataclass(frozen=True)
class Price:
    """Money per million tokens, as providers quote it: prompt (input) and completion (output, reasoning
    included: providers bill the thought as output)."""
    input_per_m: float = 0.0
    output_per_m: float = 0.0

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.input_per_m + (completion_tokens or 0) * self.output_per_m) / 1e6


@dataclass
class Completion:
    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None  # stop | length | error (ours: no finish_reason after all retries)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None  # part of completion_tokens (usage detail, else streamed chunks)
    cached_tokens: int | None = None  # part of prompt_tokens the server read from its prompt cache
    latency_s: float | None = None
    ttft_s: float | None = None
    timings: dict | None = None
    error: str | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)  # one line per failed attempt
    # what failed attempts streamed before they broke off: the server generated (and a paid API bills) those tokens
    # although no usage arrives for them; one per streamed chunk (llama.cpp, vLLM and SGLang stream a token per
    # chunk), so an estimate. dropped_attempts: attempts that streamed at least one chunk (their prompt was read).
    dropped_tokens: int = 0
    dropped_attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamError(Exception):
    """One attempt failed in a way a retry may fix (HTTP status, dropped stream, bad chunk, timeout)."""

    def __init__(self, message: str, *, retry_after: float | None = None, final: bool = False):
        super().__init__(message)
        self.retry_after, self.final = retry_after, final


class Session:
    """The connection pool, the concurrency cap and the clocks' defaults, for one run; an async context
    manager (`async with new_session(n) as s`) or closed with `await s.close()`."""

    def __init__(self, concurrency: int, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.concurrency = max(1, int(concurrency))
        self.idle_timeout_s, self.connect_timeout_s = float(idle_timeout_s), float(connect_timeout_s)
        self.http = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            timeout=httpx2.Timeout(None, connect=self.connect_timeout_s))
        self.slots = asyncio.Semaphore(self.concurrency)

    def timeout(self, idle_s: float | None = None) -> httpx2.Timeout:
        """httpx2's read/write timeouts are per network operation: exactly "no byte for idle_s"."""
        idle = float(idle_s if idle_s is not None else self.idle_timeout_s)
        return httpx2.Timeout(connect=min(self.connect_timeout_s, idle), read=idle, write=idle, pool=None)

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def new_session(concurrency: int, *, idle_timeout_s: float = IDLE_TIMEOUT_S) -> Session:
    return Session(concurrency, idle_timeout_s=idle_timeout_s)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: RETRY_BACKOFF_S * 2**attempt * U(0.5, 1.5)."""
    return RETRY_BACKOFF_S * 2 ** attempt * (rng or random).uniform(0.5, 1.5)


def _read_usage(out: Completion, usage: dict) -> None:
    out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
    out.completion_tokens = usage.get("completion_tokens", out.completion_tokens)
    details = usage.get("completion_tokens_details") or {}
    if details.get("reasoning_tokens") is not None:
        out.reasoning_tokens = int(details["reasoning_tokens"])
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:
        cached = usage.get("prompt_cache_hit_tokens")  # DeepSeek's name
    if cached is not None:
        out.cached_tokens = int(cached)


async def _one_attempt(session: Session, url: str, body: dict, headers: dict[str, str],
                       idle_s: float | None, out: Completion | None = None) -> Completion:
    """One streamed request into `out` (the caller keeps it: when the stream breaks off, `out.dropped_tokens`
    counts the chunks that arrived)."""
    out = out if out is not None else Completion()
    content, reasoning = [], []
    reasoning_chunks = 0
    t0 = time.monotonic()
    async with session.http.stream("POST", url, json=body, headers=headers, timeout=session.timeout(idle_s)) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode("utf-8", "replace")[:200].replace("\n", " ")
            wait = retry_after_s(resp.headers.get("retry-after")) \
                if resp.status_code in RETRY_AFTER_STATUSES else None
            raise StreamError(f"HTTP {resp.status_code}: {text}", retry_after=wait,
                              final=resp.status_code in NO_RETRY_STATUSES)
        done = False
        async for line in resp.aiter_lines():
            line = line.strip()
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
            if not isinstance(chunk, dict):
                raise StreamError(f"chunk is not a JSON object: {data[:80]!r}")
            if "error" in chunk:
                raise StreamError(f"server error in stream: {str(chunk['error'])[:200]}")
            if chunk.get("timings"):
                out.timings = chunk["timings"]
            if chunk.get("usage"):
                _read_usage(out, chunk["usage"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                piece_r = delta.get("reasoning_content") or delta.get("reasoning") or ""
                piece_c = delta.get("content") or ""
                if (piece_r or piece_c) and out.ttft_s is None:
                    out.ttft_s = time.monotonic() - t0
                reasoning_chunks += bool(piece_r)
                out.dropped_tokens += bool(piece_r or piece_c)  # reset to 0 once the stream completes
                reasoning.append(piece_r)
                content.append(piece_c)
                if choice.get("finish_reason"):
                    out.finish_reason = choice["finish_reason"]
        if out.finish_reason is None:
            how = "after [DONE]" if done else "(connection closed mid-answer)"
            raise StreamError(f"stream ended without a finish_reason {how}")
    out.latency_s = time.monotonic() - t0
    out.dropped_tokens = 0  # complete: the server's usage (or the caller's count) covers these chunks
    out.content, out.reasoning = "".join(content), "".join(reasoning)
    if out.reasoning_tokens is None and reasoning_chunks:
        out.reasoning_tokens = reasoning_chunks
    return out


def split_reasoning(c: Completion, *, think_open: bool = False) -> Completion:
    """Move a <think> block out of `content` when the server did not split it (no reasoning parser)."""
    if c.reasoning or ("</think>" not in c.content and "<think>" not in c.content and not think_open):
        return c
    parsed = parse_assistant(c.content, think_open=think_open)
    c.reasoning, c.content = parsed.reasoning, parsed.content
    return c


async def complete(session: Session, base_url: str, messages: list[dict], sampling: Sampling, *,
                   timeout_s: float, retries: int, model: str | None = None, api_key: str | None = None,
                   think_open: bool = False, idle_timeout_s: float | None = None) -> Completion:
    """One chat completion, streamed; never raises for request failures (see the module docstring).
    `timeout_s`: the total cap of one attempt; `idle_timeout_s`: the longest silence (default: the
    session's, never more than timeout_s)."""
    body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True}, **sampling.body()}
    if model:
        body["model"] = model
    key = (api_key or "").strip()  # a trailing newline from a key file or an env file is not part of the key
    errors: list[str] = []

    def note(message: str, limit: int | None = None) -> None:  # the key never lands in an error (records,
        message = message.replace(key, "[api key]") if key else message  # rejections, MLflow, logs): redacted,
        errors.append(message[:limit])  # then cut (a cut first could leave part of the key)

    if key and not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        note("the API key has characters an HTTP header cannot carry (spaces, control or non-ASCII characters); "
             "check the variable's value")
        return Completion(finish_reason="error", error=errors[-1], attempts=0, errors=errors)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = base_url.rstrip("/") + "/v1/chat/completions"
    idle = min(float(idle_timeout_s if idle_timeout_s is not None else session.idle_timeout_s), float(timeout_s))
    dropped_tokens = dropped_attempts = 0
    for attempt in range(retries + 1):
        wait = None
        final = False
        partial = Completion()
        try:
            async with session.slots:  # the concurrency cap holds per attempt, not across backoff sleeps
                # wait_for, not asyncio.timeout (3.11+): the packages declare Python >= 3.10
                result = await asyncio.wait_for(_one_attempt(session, url, body, headers, idle, partial), timeout_s)
            result.attempts, result.errors = attempt + 1, errors
            result.dropped_tokens, result.dropped_attempts = dropped_tokens, dropped_attempts
            return split_reasoning(result, think_open=think_open)
        except (TimeoutError, asyncio.TimeoutError):  # wait_for: the total cap (distinct classes on 3.10)
            note(f"total timeout: the request ran past {timeout_s:g} s")
        except httpx2.TimeoutException as e:
            kind = "connect" if isinstance(e, httpx2.ConnectTimeout) else "idle"
            note(f"{kind} timeout: no byte for {idle:g} s" if kind == "idle"
                 else f"connect timeout after {min(session.connect_timeout_s, idle):g} s")
        except StreamError as e:
            note(str(e))
            wait, final = e.retry_after, e.final
        except (httpx2.RemoteProtocolError, httpx2.ReadError) as e:
            note(f"connection closed mid-answer: {type(e).__name__}: {e}", 300)
        except Exception as e:  # noqa: BLE001 - anything else a server can provoke is recorded, never raised
            note(f"{type(e).__name__}: {e}", 300)
        if partial.dropped_tokens or partial.completion_tokens:  # it broke off after generating: spent all the same
            dropped_tokens += max(partial.dropped_tokens, partial.completion_tokens or 0)
            dropped_attempts += 1
        if final:
            break
        if attempt < retries:
            await asyncio.sleep(min(wait, RETRY_AFTER_MAX_S) if wait is not None else backoff_s(attempt))
    return Completion(finish_reason="error", error=errors[-1], attempts=len(errors), errors=errors,
                      dropped_tokens=dropped_tokens, dropped_attempts=dropped_attempts)
