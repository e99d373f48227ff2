"""The guard's routes: POST /v1/messages (JSON or SSE), POST /v1/messages/count_tokens, GET /health, and
`create_app`, which wires them to one `MessagesService` (service.py).

A route only checks the key, parses the body (protocol.parse_request) and hands the request to the service.
Errors use Anthropic's body `{"type": "error", "error": {"type": ..., "message": ...}}`: 400
invalid_request_error for malformed requests, 401 authentication_error, 404 not_found_error, 413
request_too_large for a body over MAX_BODY_BYTES (Anthropic's 32 MB), 502 api_error
when the engine is unreachable, the engine's own status (re-shaped) when it refuses.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cardforge.serve.anthropic.protocol import ApiError, CountTokensRequest, MessagesRequest, RequestT, parse_request
from cardforge.serve.anthropic.service import MessagesService

router = APIRouter()


def authorized(api_key: str | None, request: Request) -> bool:
    """No key configured: open. Else the key as x-api-key or `Authorization: Bearer` (constant-time compare)."""
    if not api_key:
        return True
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    return hmac.compare_digest(given.encode(), api_key.encode())


MAX_BODY_BYTES = 32 * 10**6  # Anthropic's own limit on a Messages request (32 MB): 413 request_too_large above it


def _too_large(limit: int) -> ApiError:
    return ApiError.of(413, "request_too_large", f"request body exceeds the maximum size of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read at most `limit` bytes far: a bigger one (declared or streamed) is a 413 before it is held in
    memory whole (request.body() would buffer any size a client sends)."""
    declared = request.headers.get("content-length") or ""
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


async def parse(request: Request, schema: type[RequestT]) -> tuple[dict, RequestT]:
    """The key first (a 401 before any 400), then the body (at most app.state.max_body_bytes: else a 413)."""
    if not authorized(request.app.state.api_key, request):
        raise ApiError.of(401, "authentication_error", "invalid or missing API key (x-api-key or Bearer)")
    return parse_request(await read_body(request, request.app.state.max_body_bytes), schema)


def service(request: Request) -> MessagesService:
    return request.app.state.service


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> JSONResponse:
    payload, req = await parse(request, CountTokensRequest)
    return JSONResponse(await service(request).count_tokens(payload, req))


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    payload, req = await parse(request, MessagesRequest)
    if req.stream:
        return StreamingResponse(await service(request).stream(payload, req), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await service(request).create(payload, req))


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body, status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in Anthropic's shape."""
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "api_error")
    err = ApiError.of(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}")
    return JSONResponse(err.body, status_code=err.status)


def create_app(backend: str, *, api_key: str | None = None, backend_api_key: str | None = None,
               model: str | None = None, timeout_s: float = 1800.0, idle_timeout_s: float = 600.0,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The guard in front of `backend` (the engine's base URL); `api_key`: required from clients (None: open);
    `max_body_bytes`: the largest request body (413 above). The other arguments go to MessagesService."""
    app = FastAPI(title="cardforge Anthropic guard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api_key = api_key
    app.state.max_body_bytes = int(max_body_bytes)
    app.state.service = MessagesService(backend, backend_api_key=backend_api_key, model=model,
                                        timeout_s=timeout_s, idle_timeout_s=idle_timeout_s)
    app.router.on_shutdown.append(app.state.service.aclose)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(router)
    return app
