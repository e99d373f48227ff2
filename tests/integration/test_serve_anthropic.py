"""The Anthropic bridge end to end: the official `anthropic` client -> bridge -> llama-server (SmolLM2 for
sensible text, the tiny Qwen3.5 model for thinking blocks and tool rendering), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

anthropic = pytest.importorskip("anthropic")

from cardforge.core.models.smollm2 import gguf_path  # noqa: E402
from cardforge.serve.anthropic.launch import anthropic_bridge  # noqa: E402
from cardforge.serve.launchers.llama_cpp import llama_server  # noqa: E402

SERVE = {"host": "127.0.0.1", "port": 0, "ctx_size": 2048, "threads": 2, "mtp": {"enabled": False}}
KEY = "test-key-123"
TOOLS = [{"name": "get_weather", "description": "Current weather for a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I should call the tool.", "signature": ""},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C and sunny"},
                                 {"type": "text", "text": "Summarise in one sentence."}]},
]


@pytest.fixture(scope="module")
def smol():
    with llama_server(gguf_path(), SERVE) as srv, anthropic_bridge(srv.base_url) as open_bridge, \
            anthropic_bridge(srv.base_url, api_key=KEY) as keyed_bridge:
        yield open_bridge.base_url, keyed_bridge.base_url


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    with llama_server(tiny_gguf, SERVE) as srv, anthropic_bridge(srv.base_url) as bridge:
        yield bridge.base_url


def raw(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/messages", data=body,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_non_streaming_message(smol):
    client = anthropic.Anthropic(base_url=smol[0], api_key="unused")
    msg = client.messages.create(model="smollm2", max_tokens=16, system="Be brief.", extra_body={"temperature": 0},
                                 messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "smollm2"
    assert msg.content[0].type == "text" and "Paris" in msg.content[0].text
    assert msg.stop_reason in {"end_turn", "max_tokens"}
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 10 and 0 < msg.usage.output_tokens <= 16


def test_streaming_message_event_sequence(smol):
    client = anthropic.Anthropic(base_url=smol[0], api_key="unused")
    with client.messages.stream(model="smollm2", max_tokens=12, system="Be brief.", extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "What is the capital of France?"}]) as stream:
        events = [ev.type for ev in stream]
        final = stream.get_final_message()
    raw_types = [e for e in events if e not in ("text", "thinking", "input_json", "signature")]
    assert raw_types[0] == "message_start" and raw_types[-2:] == ["message_delta", "message_stop"]
    assert raw_types[1:4] == ["content_block_start", "content_block_delta", "content_block_delta"]
    assert raw_types[-3] == "content_block_stop"
    assert "Paris" in final.content[0].text
    assert final.stop_reason in {"end_turn", "max_tokens"} and final.usage.output_tokens > 0


def test_tools_request_with_tool_use_and_tool_result_history(smol):
    client = anthropic.Anthropic(base_url=smol[0], api_key="unused")
    msg = client.messages.create(model="smollm2", max_tokens=8, tools=TOOLS,
                                 tool_choice={"type": "auto"}, messages=HISTORY)
    assert msg.stop_reason in {"end_turn", "max_tokens", "tool_use"}
    assert all(b.type in {"text", "thinking", "tool_use"} for b in msg.content)


def test_tools_and_thinking_reach_the_qwen_template(tiny):
    """The tiny model's template renders tools and reasoning: input grows with tools; output comes back as
    a thinking block (reasoning_content), streamed as thinking_delta."""
    client = anthropic.Anthropic(base_url=tiny, api_key="unused")
    plain = client.messages.create(model="tiny", max_tokens=2, messages=HISTORY)
    with_tools = client.messages.create(model="tiny", max_tokens=2, messages=HISTORY, tools=TOOLS)
    size = lambda m: m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)  # noqa: E731
    assert size(with_tools) > size(plain) + 50
    assert [b.type for b in plain.content] == ["thinking"] and plain.stop_reason == "max_tokens"
    with client.messages.stream(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "hi"}],
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        kinds = [ev.delta.type for ev in stream if ev.type == "content_block_delta"]
    assert kinds and set(kinds) == {"thinking_delta"}


def test_malformed_requests_get_anthropic_400s(smol):
    status, body = raw(smol[0], b"{not json")
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    status, body = raw(smol[0], json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode())
    assert status == 400 and "max_tokens" in body["error"]["message"]
    client = anthropic.Anthropic(base_url=smol[0], api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        client.messages.create(model="m", max_tokens=4, messages=[])
    req = urllib.request.Request(smol[0] + "/v1/nope")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 404 and json.loads(err.value.read())["error"]["type"] == "not_found_error"


def test_api_key_is_enforced(smol):
    keyed = smol[1]
    bad = anthropic.Anthropic(base_url=keyed, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    good = anthropic.Anthropic(base_url=keyed, api_key=KEY)  # sends x-api-key
    assert good.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}]).content
    body = json.dumps({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert raw(keyed, body, {"Authorization": f"Bearer {KEY}"})[0] == 200
    status, err = raw(keyed, body)
    assert status == 401 and err["error"]["type"] == "authentication_error"


def listening(pid: int) -> list[tuple[str, int]]:
    """The (address, port) pairs process `pid` really listens on, read from the kernel (psutil)."""
    import psutil

    proc = psutil.Process(pid)
    conns = proc.net_connections(kind="inet") if hasattr(proc, "net_connections") else proc.connections(kind="inet")
    return sorted((c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN)


@pytest.mark.parametrize("args, expect", [([], "127.0.0.1"), (["--host", "127.0.0.2"], "127.0.0.2")],
                         ids=["default", "control-127.0.0.2"])
def test_binds_loopback_by_default(tmp_path, args, expect):
    """The bridge CLI without --host listens on 127.0.0.1 only: the bound socket, not the argparse default.
    The control run (--host 127.0.0.2) shows the check sees whatever address the process really bound."""
    import sys

    from cardforge.serve.process import free_port, managed_server

    port = free_port()
    cmd = [sys.executable, "-m", "cardforge.serve.anthropic", "--backend", "http://127.0.0.1:9",
           "--port", str(port), "--log-level", "warning", *args]
    with managed_server(cmd, host=expect, port=port, log_path=tmp_path / "bridge.log", timeout_s=60) as srv:
        assert listening(srv.pid) == [(expect, port)]
