"""Routes of the bridge: POST /v1/messages (JSON or SSE), GET /health. Errors use Anthropic's body
`{"type": "error", "error": {"type": ..., "message": ...}}`: 400 invalid_request_error for malformed
requests, 401 authentication_error, 404 not_found_error, 502 api_error when the backend fails.
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

from cardforge.serve.anthropic.protocol import MessagesRequest
from cardforge.serve.anthropic.stream import StreamTranslator, sse
from cardforge.serve.anthropic.translate import TranslationError, error_body, from_openai, to_openai


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status)


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        parts.append(f"{loc or 'body'}: {err['msg']}")
    return "; ".join(parts)


def _backend_message(status: int, text: str) -> str:
    try:
        err = json.loads(text).get("error")
        text = err.get("message", text) if isinstance(err, dict) else (err or text)
    except (ValueError, AttributeError):
        pass
    return f"backend returned {status}: {str(text)[:1000]}"


def create_app(backend: str, *, api_key: str | None = None, backend_api_key: str | None = None,
               model: str | None = None, timeout_s: float = 1800.0) -> FastAPI:
    """`backend`: the OpenAI-compatible base URL (with or without /v1). `model` replaces the client's model
    name in backend requests (vLLM/SGLang check it; llama-server ignores it)."""
    base = backend.rstrip("/")
    url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
    headers = {"Authorization": f"Bearer {backend_api_key}"} if backend_api_key else {}
    app = FastAPI(title="cardforge Anthropic bridge", docs_url=None, redoc_url=None, openapi_url=None)
    client = httpx2.AsyncClient(timeout=httpx2.Timeout(timeout_s, connect=10.0), headers=headers)
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

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/messages")
    async def messages(request: Request):
        if not authorized(request):
            return _error(401, "authentication_error", "invalid or missing API key (x-api-key or Bearer)")
        try:
            payload = json.loads(await request.body())
        except ValueError as e:
            return _error(400, "invalid_request_error", f"request body is not valid JSON: {e}")
        if not isinstance(payload, dict):
            return _error(400, "invalid_request_error", "request body must be a JSON object")
        try:
            req = MessagesRequest.model_validate(payload)
            body = to_openai(req, model)
        except ValidationError as e:
            return _error(400, "invalid_request_error", _validation_message(e))
        except TranslationError as e:
            return _error(400, "invalid_request_error", str(e))
        if req.stream:
            return await _stream(body, req.model)
        try:
            resp = await client.post(url, json=body)
        except httpx2.HTTPError as e:
            return _error(502, "api_error", f"backend {url} unreachable: {e}")
        if resp.status_code >= 400:
            status, kind = (400, "invalid_request_error") if resp.status_code < 500 else (502, "api_error")
            return _error(status, kind, _backend_message(resp.status_code, resp.text))
        return JSONResponse(from_openai(resp.json(), req.model, body.get("tools")))

    async def _stream(body: dict, client_model: str):
        # open the backend stream before answering, so backend errors still get a proper status code
        ctx = client.stream("POST", url, json=body)
        try:
            resp = await ctx.__aenter__()
        except httpx2.HTTPError as e:
            return _error(502, "api_error", f"backend {url} unreachable: {e}")
        if resp.status_code >= 400:
            text = (await resp.aread()).decode(errors="replace")
            await ctx.__aexit__(None, None, None)
            status, kind = (400, "invalid_request_error") if resp.status_code < 500 else (502, "api_error")
            return _error(status, kind, _backend_message(resp.status_code, text))

        async def events() -> AsyncIterator[str]:
            tr = StreamTranslator(client_model, tools=body.get("tools"))
            try:
                for ev in tr.start():
                    yield sse(ev)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    for ev in tr.feed(json.loads(data)):
                        yield sse(ev)
                for ev in tr.finish():
                    yield sse(ev)
            except (httpx2.HTTPError, ValueError) as e:  # mid-stream: the status is sent, say it in-band
                yield sse(("error", error_body("api_error", f"backend stream failed: {e}")))
            finally:
                await ctx.__aexit__(None, None, None)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
