"""`MessagesService`: the guard's one connection to the engine. It owns the HTTP client, forwards a validated
request to the engine's own /v1/messages (or count_tokens) after the gap rewrites (translate.native_body),
and hands back the answer with the answer-side gaps fixed: a dict (translate.fix_message) or, for a stream,
the SSE text the client gets (stream.StreamGuard). It knows nothing about routes or auth (router.py).

Every failure before the first byte of the answer is an `ApiError` (502 api_error when the engine is
unreachable, the engine's own status re-shaped when it refuses); a stream that fails after its status was
sent says so in-band, as an `error` event, never as a finished turn.
"""

from __future__ import annotations

import json
from typing import AsyncIterator

import httpx2

from cardforge.serve.anthropic.protocol import ApiError, CountTokensRequest, MessagesRequest
from cardforge.serve.anthropic.stream import StreamGuard, parse_sse, sse
from cardforge.serve.anthropic.translate import engine_error, error_body, fix_message, native_body, prefill


def _engine_json(resp: httpx2.Response) -> object:
    try:
        return resp.json()
    except ValueError:
        return resp.text


class MessagesService:
    """`backend`: the engine's base URL (its /v1/messages is called). `model` replaces the client's model name
    (vLLM/SGLang check it; llama-server ignores it). `idle_timeout_s` is the longest silence between two bytes
    of the engine's answer; `timeout_s` caps a whole non-streaming answer (a stream may run longer)."""

    def __init__(self, backend: str, *, backend_api_key: str | None = None, model: str | None = None,
                 timeout_s: float = 1800.0, idle_timeout_s: float = 600.0):
        self.base = backend.rstrip("/").removesuffix("/v1")
        self.model = model
        self.timeout_s = timeout_s
        # an env file's trailing newline is not part of the key; a key a header cannot carry is refused here, once
        # (h11 would refuse it per request with the key in its message, which _unreachable sends to the client)
        self._key = (backend_api_key or "").strip()
        if self._key and not all(0x21 <= ord(ch) <= 0x7E for ch in self._key):
            raise ValueError("the backend API key has spaces, control or non-ASCII characters (a pasted line "
                             "break?), which an HTTP header cannot carry")
        headers = {"x-api-key": self._key, "Authorization": f"Bearer {self._key}"} if self._key else {}
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(connect=10.0, read=idle_timeout_s, write=60.0, pool=None), headers=headers)

    async def aclose(self) -> None:
        await self.client.aclose()

    def _unreachable(self, e: Exception) -> ApiError:
        why = str(e).replace(self._key, "[backend key]") if self._key else str(e)  # never the key to a client
        return ApiError.of(502, "api_error", f"engine {self.base} unreachable: {why[:300]}")

    async def _post(self, path: str, body: dict, **kw) -> httpx2.Response:
        try:
            resp = await self.client.post(self.base + path, json=body, **kw)
        except httpx2.HTTPError as e:
            raise self._unreachable(e) from e
        if resp.status_code >= 400:
            raise ApiError(*engine_error(resp.status_code, _engine_json(resp)))
        return resp

    @staticmethod
    def _malformed(what: str, body: object) -> ApiError:
        """The engine said 200 but its body is not what the Messages API answers: a 502, never a bare 500."""
        return ApiError.of(502, "api_error", f"the engine's {what} answer is malformed: {str(body)[:200]}")

    async def count_tokens(self, payload: dict, req: CountTokensRequest) -> dict:
        resp = await self._post("/v1/messages/count_tokens", native_body(payload, req, self.model))
        body = _engine_json(resp)
        try:
            return {"input_tokens": int(body["input_tokens"])}  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            raise self._malformed("count_tokens", body) from None

    async def create(self, payload: dict, req: MessagesRequest) -> dict:
        """A non-streaming answer, as the Messages API gives it."""
        resp = await self._post("/v1/messages", native_body(payload, req, self.model),
                                timeout=httpx2.Timeout(self.timeout_s, connect=10.0))
        body = _engine_json(resp)
        if not isinstance(body, dict) or not all(isinstance(b, dict) for b in body.get("content") or []):
            raise self._malformed("messages", body)
        return fix_message(body, req)

    async def stream(self, payload: dict, req: MessagesRequest) -> AsyncIterator[str]:
        """The answer's SSE text, event by event. The engine's stream is opened here, before the caller
        answers, so that its refusals still get a proper status code (ApiError)."""
        ctx = self.client.stream("POST", self.base + "/v1/messages", json=native_body(payload, req, self.model))
        try:
            resp = await ctx.__aenter__()
        except httpx2.HTTPError as e:
            raise self._unreachable(e) from e
        if resp.status_code >= 400:
            raw = await resp.aread()
            await ctx.__aexit__(None, None, None)
            try:
                parsed: object = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiError(*engine_error(resp.status_code, parsed))
        return self._relay(resp, ctx, StreamGuard(prefill(req)))

    @staticmethod
    async def _relay(resp: httpx2.Response, ctx, guard: StreamGuard) -> AsyncIterator[str]:
        buf: list[str] = []
        try:
            async for line in resp.aiter_lines():
                line = line.rstrip("\r\n")
                if line:
                    buf.append(line)
                    continue
                for name, data in parse_sse(buf + [""]):
                    for ev in guard.feed(name, data):
                        yield sse(ev)
                buf = []
            if buf:  # a last event without its blank line: whole or broken
                for name, data in parse_sse(buf):
                    for ev in guard.feed(name, data):
                        yield sse(ev)
        except (httpx2.HTTPError, ValueError) as e:  # mid-stream: the status is sent, say it in-band
            guard.failed = True
            yield sse(("error", error_body("api_error", f"the engine's stream failed: {type(e).__name__}: {e}")))
        finally:
            await ctx.__aexit__(None, None, None)
        for ev in guard.finish():
            yield sse(ev)
