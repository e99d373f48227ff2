"""The guard's routes: POST /v1/messages (JSON or SSE), POST /v1/messages/count_tokens, GET /health.

Each request is validated as Anthropic validates it (protocol.py), rewritten only where the engine's native
endpoint measurably differs (translate.py), forwarded to the engine's own /v1/messages, and its answer
relayed with the answer-side gaps fixed (translate.fix_message, stream.StreamGuard). Errors use Anthropic's
body `{"type": "error", "error": {"type": ..., "message": ...}}`: 400 invalid_request_error for malformed
requests, 401 authentication_error, 404 not_found_error, 502 api_error when the engine is unreachable,
the engine's own status (re-shaped) when it refuses.
"""

from __future__ import annotations

import hmac
import json
from typing import AsyncIterator

import httpx2
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cardforge.serve.anthropic.protocol import CountTokensRequest, MessagesRequest
from cardforge.serve.anthropic.stream import StreamGuard, parse_sse, sse
from cardforge.serve.anthropic.translate import engine_error, error_body, fix_message, native_body, prefill


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status)


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "union[")))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _engine_json(resp: httpx2.Response) -> object:
    try:
        return resp.json()
    except ValueError:
        return resp.text


def create_app(backend: str, *, api_key: str | None = None, backend_api_key: str | None = None,
               model: str | None = None, timeout_s: float = 1800.0, idle_timeout_s: float = 600.0) -> FastAPI:
    """`backend`: the engine's base URL (its /v1/messages is called). `model` replaces the client's model name
    (vLLM/SGLang check it; llama-server ignores it)."""
    base = backend.rstrip("/").removesuffix("/v1")
    headers = {"x-api-key": backend_api_key, "Authorization": f"Bearer {backend_api_key}"} if backend_api_key else {}
    app = FastAPI(title="cardforge Anthropic guard", docs_url=None, redoc_url=None, openapi_url=None)
    # read = silence between two bytes of the engine's stream; the whole answer may take up to timeout_s
    client = httpx2.AsyncClient(timeout=httpx2.Timeout(connect=10.0, read=idle_timeout_s, write=60.0, pool=None),
                                headers=headers)
    app.router.on_shutdown.append(client.aclose)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "api_error")
        return _error(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}")

    def authorized(request: Request) -> bool:
        if not api_key:
            return True
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        return hmac.compare_digest(given.encode(), api_key.encode())

    async def parse(request: Request, schema):
        if not authorized(request):
            return None, None, _error(401, "authentication_error", "invalid or missing API key (x-api-key or Bearer)")
        try:
            payload = json.loads(await request.body())
        except ValueError as e:
            return None, None, _error(400, "invalid_request_error", f"request body is not valid JSON: {e}")
        if not isinstance(payload, dict):
            return None, None, _error(400, "invalid_request_error", "request body must be a JSON object")
        try:
            return payload, schema.model_validate(payload), None
        except ValidationError as e:
            return None, None, _error(400, "invalid_request_error", _validation_message(e))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request):
        payload, req, err = await parse(request, CountTokensRequest)
        if err:
            return err
        try:
            resp = await client.post(base + "/v1/messages/count_tokens", json=native_body(payload, req, model))
        except httpx2.HTTPError as e:
            return _error(502, "api_error", f"engine {base} unreachable: {e}")
        if resp.status_code >= 400:
            status, body = engine_error(resp.status_code, _engine_json(resp))
            return JSONResponse(body, status_code=status)
        return JSONResponse({"input_tokens": int(resp.json()["input_tokens"])})

    @app.post("/v1/messages")
    async def messages(request: Request):
        payload, req, err = await parse(request, MessagesRequest)
        if err:
            return err
        body = native_body(payload, req, model)
        if req.stream:
            return await _stream(body, req)
        try:
            resp = await client.post(base + "/v1/messages", json=body, timeout=httpx2.Timeout(timeout_s, connect=10.0))
        except httpx2.HTTPError as e:
            return _error(502, "api_error", f"engine {base} unreachable: {e}")
        if resp.status_code >= 400:
            status, out = engine_error(resp.status_code, _engine_json(resp))
            return JSONResponse(out, status_code=status)
        return JSONResponse(fix_message(resp.json(), req))

    async def _stream(body: dict, req: MessagesRequest):
        # open the engine's stream before answering, so its refusals still get a proper status code
        ctx = client.stream("POST", base + "/v1/messages", json=body)
        try:
            resp = await ctx.__aenter__()
        except httpx2.HTTPError as e:
            return _error(502, "api_error", f"engine {base} unreachable: {e}")
        if resp.status_code >= 400:
            raw = await resp.aread()
            await ctx.__aexit__(None, None, None)
            try:
                parsed: object = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            status, out = engine_error(resp.status_code, parsed)
            return JSONResponse(out, status_code=status)

        async def lines() -> AsyncIterator[str]:
            async for line in resp.aiter_lines():
                yield line.rstrip("\r\n")

        async def events() -> AsyncIterator[str]:
            guard = StreamGuard(prefill(req))
            buf: list[str] = []
            try:
                async for line in lines():
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
                yield sse(("error", error_body("api_error", f"the engine's stream failed: {type(e).__name__}: "
                                                             f"{e}")))
            finally:
                await ctx.__aexit__(None, None, None)
            for ev in guard.finish():
                yield sse(ev)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
