"""The guard when the engine answers 200 with something that is not a Messages API answer (a proxy's HTML page,
`{}` from count_tokens, an SSE event whose data is not a JSON object). Before: KeyError / ValueError /
AttributeError escaped the service (a bare 500 with a traceback; in a stream, the relay died without the in-band
error event, so a client saw a cut stream). Now: a 502 api_error, and in a stream an `error` event. The engine is an
httpx2.MockTransport; nothing listens."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from cardforge.serve.anthropic.protocol import ApiError, CountTokensRequest, MessagesRequest
from cardforge.serve.anthropic.service import MessagesService

REQ = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def _service(handler) -> MessagesService:
    svc = MessagesService("http://engine.invalid")
    svc.client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return svc


@pytest.mark.parametrize("body", [b"{}", b'{"input_tokens": "many"}', b"<html>bad gateway</html>", b"[1]"])
def test_a_malformed_count_tokens_answer_is_a_502(body):
    svc = _service(lambda request: httpx2.Response(200, content=body))
    with pytest.raises(ApiError) as e:
        asyncio.run(svc.count_tokens(dict(REQ), CountTokensRequest.model_validate(REQ)))
    assert e.value.status == 502 and e.value.body["error"]["type"] == "api_error"


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[]", b'{"content": ["text"]}'])
def test_a_malformed_message_answer_is_a_502(body):
    svc = _service(lambda request: httpx2.Response(200, content=body))
    with pytest.raises(ApiError) as e:
        asyncio.run(svc.create(dict(REQ), MessagesRequest.model_validate(REQ)))
    assert e.value.status == 502


def test_a_stream_event_that_is_not_an_object_ends_in_an_error_event():
    sse = (b'event: message_start\ndata: {"type": "message_start", "message": {}}\n\n'
           b"event: content_block_delta\ndata: 5\n\n")
    svc = _service(lambda request: httpx2.Response(200, content=sse, headers={"content-type": "text/event-stream"}))
    req = MessagesRequest.model_validate({**REQ, "stream": True})

    async def run() -> list[str]:
        return [ev async for ev in await svc.stream(dict(REQ, stream=True), req)]

    events = asyncio.run(run())
    assert events[0].startswith("event: message_start")
    assert events[-1].startswith("event: error") and "malformed stream event" in events[-1], events
    assert sum(e.startswith("event: error") for e in events) == 1  # said once, not again by finish()


def test_the_backend_key_never_reaches_a_client():
    """Before: CARDFORGE_BACKEND_API_KEY with a trailing newline made every request fail in h11 with
    "Illegal header value b'sk-...\\n'", and the 502 body sent that text, key included, to whoever asked the guard
    (open by default). Now the key is stripped, a key no header can carry is refused at start, and an error that
    quotes the key is redacted."""
    seen = []

    def engine(request):
        seen.append(request.headers.get("x-api-key"))
        raise httpx2.ConnectError(f"refused with {request.headers['authorization']}")

    svc = MessagesService("http://engine.invalid", backend_api_key="sk-BACKEND-SECRET\n")
    svc.client = httpx2.AsyncClient(transport=httpx2.MockTransport(engine), headers=svc.client.headers)
    with pytest.raises(ApiError) as e:
        asyncio.run(svc.create(dict(REQ), MessagesRequest.model_validate(REQ)))
    assert seen == ["sk-BACKEND-SECRET"] and e.value.status == 502
    assert "SECRET" not in repr(e.value.body) and "[backend key]" in e.value.body["error"]["message"]
    with pytest.raises(ValueError, match="cannot carry"):
        MessagesService("http://engine.invalid", backend_api_key="sk-BACKEND SECRET")
