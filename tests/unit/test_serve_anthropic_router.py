"""The guard's split (router.py / service.py / protocol.py), in process: the routes only check the key, parse
and hand over to the MessagesService, whose answers and ApiErrors they return as they are; the service alone
talks to the engine. The same behaviour over real HTTP, with the official client: tests/integration/
test_serve_anthropic*.py."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest

from cardforge.serve.anthropic.protocol import ApiError, MessagesRequest, parse_request
from cardforge.serve.anthropic.router import create_app
from cardforge.serve.anthropic.service import MessagesService

BODY = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "cache_control": {"x": 1}}


class ScriptedService:
    """Stands in for MessagesService: records what the routes hand it."""

    def __init__(self, error: ApiError | None = None):
        self.calls: list[tuple[str, dict, object]] = []
        self.error = error

    async def create(self, payload, req):
        self.calls.append(("create", payload, req))
        if self.error:
            raise self.error
        return {"type": "message", "content": [{"type": "text", "text": "ok"}]}

    async def count_tokens(self, payload, req):
        self.calls.append(("count_tokens", payload, req))
        return {"input_tokens": 3}

    async def stream(self, payload, req):
        self.calls.append(("stream", payload, req))

        async def events():
            yield "event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n"

        return events()

    async def aclose(self):
        pass


def call(app, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
    async def go():
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://guard") as client:
            content = json.dumps(body).encode() if isinstance(body, dict) else body
            return await client.request(method, path, content=content, headers=headers or {})

    return asyncio.run(go())


def guard(service, api_key: str | None = None):
    app = create_app("http://127.0.0.1:9", api_key=api_key)
    app.state.service = service
    return app


def test_routes_hand_the_clients_json_and_the_validated_request_to_the_service():
    svc = ScriptedService()
    r = call(guard(svc), "POST", "/v1/messages", BODY)
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "ok"
    (name, payload, req), = svc.calls
    assert name == "create" and payload == BODY and isinstance(req, MessagesRequest)  # unknown fields kept
    assert call(guard(svc), "POST", "/v1/messages/count_tokens", BODY).json() == {"input_tokens": 3}


def test_a_stream_is_the_services_sse_text():
    svc = ScriptedService()
    r = call(guard(svc), "POST", "/v1/messages", {**BODY, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text == 'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    assert [c[0] for c in svc.calls] == ["stream"]


def test_the_key_is_checked_before_the_body():
    svc = ScriptedService()
    app = guard(svc, api_key="k")
    r = call(app, "POST", "/v1/messages", b"not json")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = call(app, "POST", "/v1/messages", b"not json", {"Authorization": "Bearer k"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("request body is not valid JSON")
    assert call(app, "POST", "/v1/messages", BODY, {"x-api-key": "k"}).status_code == 200
    assert len(svc.calls) == 1  # refused requests never reach the service


def test_a_service_error_is_answered_as_it_is():
    svc = ScriptedService(ApiError.of(529, "overloaded_error", "busy"))
    r = call(guard(svc), "POST", "/v1/messages", BODY)
    assert r.status_code == 529
    assert r.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}


def test_unknown_route_and_method_in_anthropics_shape():
    r = call(guard(ScriptedService()), "GET", "/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = call(guard(ScriptedService()), "GET", "/v1/messages")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw, message", [
    (b"[1]", "request body must be a JSON object"),
    (json.dumps({**BODY, "max_tokens": "5"}).encode(), "max_tokens: Input should be a valid integer"),
])
def test_parse_request_refuses_with_a_400(raw, message):
    with pytest.raises(ApiError) as e:
        parse_request(raw, MessagesRequest)
    assert e.value.status == 400 and e.value.body["error"]["message"] == message


def test_the_service_says_502_when_the_engine_is_unreachable():
    async def go():
        svc = MessagesService("http://127.0.0.1:9/v1")  # the discard port: nothing listens
        try:
            await svc.create(BODY, MessagesRequest.model_validate(BODY))
        finally:
            await svc.aclose()

    with pytest.raises(ApiError) as e:
        asyncio.run(go())
    assert e.value.status == 502 and e.value.body["error"]["type"] == "api_error"
    assert "engine http://127.0.0.1:9 unreachable" in e.value.body["error"]["message"]
