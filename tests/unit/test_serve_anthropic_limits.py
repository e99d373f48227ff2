"""The guard's limits on what a client sends, through the ASGI app itself (no server, no engine: both refusals
come before the engine is called).

* a body over the size limit is a 413 request_too_large, read no further than the limit (before:
  `request.body()` buffered any size, the guard's memory was the client's to fill);
* a body nested deeper than MAX_JSON_DEPTH is a 400 invalid_request_error (before: 4 KB of nested `input` or
  `[[[[` raised RecursionError in json.loads / the forwarding deepcopy: a bare 500, not Anthropic's shape)."""

from __future__ import annotations

import asyncio
import json

import pytest

from cardforge.serve.anthropic.protocol import MAX_JSON_DEPTH, json_depth
from cardforge.serve.anthropic.router import create_app


def _post(app, body: bytes, chunk: int = 1 << 16, headers: dict | None = None) -> tuple[int, dict, int]:
    """(status, JSON body, bytes the app pulled from the client) of one POST /v1/messages."""
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    pulled = 0

    async def receive():
        nonlocal pulled
        if parts:
            part = parts.pop(0)
            pulled += len(part)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        return {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    hdrs = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/messages", "raw_path": b"/v1/messages", "query_string": b"", "root_path": "",
             "headers": hdrs, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8082), "app": app}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload), pulled


def _request(inner: str = '"x"') -> bytes:
    return ('{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": %s}}]}, '
            '{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}], '
            '"tool_choice": {"type": "tool", "name": "nope"}}' % inner).encode()


def test_an_oversized_body_is_a_413_read_no_further_than_the_limit():
    app = create_app("http://127.0.0.1:9", max_body_bytes=1000)
    body = b'{"model": "m", "pad": "' + b"x" * 100_000 + b'"}'
    status, err, pulled = _post(app, body, chunk=512)
    assert status == 413 and err["error"]["type"] == "request_too_large", err
    assert pulled <= 1024  # stopped at the first chunk past the limit
    status, err, pulled = _post(app, body, headers={"content-length": str(len(body))})
    assert status == 413 and pulled == 0  # a declared size over the limit: not read at all


def test_a_body_under_the_limit_is_parsed():
    status, err, _ = _post(create_app("http://127.0.0.1:9", max_body_bytes=10_000), _request())
    assert status == 400 and "tool_choice" in err["error"]["message"], err  # validated, refused for its content


@pytest.mark.parametrize("body", [b"[" * 100_000, _request('{"a": ' * 2000 + "1" + "}" * 2000),
                                  _request('{"a": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1))])
def test_deep_nesting_is_a_400_not_a_500(body):
    status, err, _ = _post(create_app("http://127.0.0.1:9"), body)
    assert status == 400 and err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
    assert "nests deeper" in err["error"]["message"]


def test_json_depth():
    assert [json_depth(x) for x in (1, [], {}, [1], {"a": [1, {"b": []}]}, [[[[]]]])] == [0, 1, 1, 1, 4, 4]
