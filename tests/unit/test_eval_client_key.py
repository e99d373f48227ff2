"""The one client and the API key; and the client without asyncio.timeout (Python 3.10, which the packages declare).

Before: a key with a trailing newline (an env file, `KEY=$(cat key.txt)` done another way) made h11 refuse the header
with `LocalProtocolError: Illegal header value b'Bearer sk-...\\n'`, which the client recorded as the request's error:
the full key went into every rejected sample (rejections.jsonl, an MLflow artifact), the outage line printed by the
data stage and the eval records. And `asyncio.timeout` (3.11+) inside the catch-all turned every request on 3.10
into finish_reason="error" ("AttributeError: module 'asyncio' has no attribute 'timeout'")."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from cardforge.agent.client import Sampling, Session, complete

SECRET = "sk-SECRET-0123456789abcdef"
SSE = (b'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": null}]}\n\n'
       b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, '
       b'"completion_tokens": 1}}\n\ndata: [DONE]\n\n')


def _ask(handler, key: str | None, timeout_s: float = 10.0, retries: int = 0):
    async def run():
        async with Session(1) as s:
            s.http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
            return await complete(s, "http://teacher.invalid", [{"role": "user", "content": "x"}],
                                  Sampling(max_tokens=4), timeout_s=timeout_s, retries=retries, api_key=key)
    return asyncio.run(run())


def _ok(seen: list):
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        return httpx2.Response(200, content=SSE, headers={"content-type": "text/event-stream"})
    return handler


def test_a_trailing_newline_is_not_part_of_the_key():
    seen: list = []
    c = _ask(_ok(seen), SECRET + "\n")
    assert c.finish_reason == "stop" and seen == [f"Bearer {SECRET}"], (c.errors, seen)


def test_a_key_a_header_cannot_carry_is_refused_without_showing_it():
    seen: list = []
    c = _ask(_ok(seen), "sk-SECRET with\na break")
    assert c.finish_reason == "error" and seen == []  # nothing sent
    assert "SECRET" not in repr(c.errors) and "cannot carry" in c.error


def test_the_key_never_lands_in_an_error():
    def echo(request: httpx2.Request) -> httpx2.Response:  # a proxy or library error quoting the header
        raise RuntimeError(f"upstream refused {request.headers['authorization']} " + "x" * 280)

    c = _ask(echo, SECRET, retries=1)
    assert c.finish_reason == "error" and len(c.errors) == 2
    assert SECRET not in repr(c.errors) and "SECRET" not in repr(c.errors) and "[api key]" in c.errors[0]


def test_no_asyncio_timeout_needed(monkeypatch):
    monkeypatch.delattr(asyncio, "timeout", raising=False)  # as on Python 3.10
    seen: list = []
    assert _ask(_ok(seen), SECRET).finish_reason == "stop"

    async def slow(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(30)
        return httpx2.Response(200, content=SSE)

    c = _ask(slow, SECRET, timeout_s=0.3)
    assert c.finish_reason == "error" and c.error.startswith("total timeout"), c.errors
