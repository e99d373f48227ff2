"""The guard in front of a scripted native-Messages engine (tests/support/messages_engine.py), for what the
tiny models cannot show through a real llama-server: tool_use answers (they never call a tool), exactly
what the guard forwards for each gap rewrite, and broken engine streams. The official `anthropic` client
and raw HTTP, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.request

import pytest

anthropic = pytest.importorskip("anthropic")

from cardforge.serve.anthropic.launch import anthropic_bridge  # noqa: E402
from support.messages_engine import MessagesEngine  # noqa: E402

TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "run_bash", "description": "Shell", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def guarded():
    with MessagesEngine() as engine, anthropic_bridge(engine.base_url) as guard:
        yield engine, guard.base_url


def client(url):
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)


def user(text, **extra):
    return [{"role": "user", "content": text}]


def sse_events(url: str, body: dict) -> list[tuple[str, dict]]:
    req = urllib.request.Request(url + "/v1/messages", data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read().decode()
    out = []
    for chunk in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_tool_use_streams_through_with_input_json_deltas(guarded):
    engine, url = guarded
    with client(url).messages.stream(model="m", max_tokens=50, tools=TOOLS, messages=user("MODE=tool_use")) as s:
        deltas = [ev.delta.partial_json for ev in s if ev.type == "content_block_delta"]
        final = s.get_final_message()
    assert deltas == ['{"command": ', '"ls"}'] and final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content] == [("tool_use", "get_weather", {"command": "ls"})]


def test_beta_endpoint_and_headers_claude_code_uses(guarded):
    """Claude Code calls POST /v1/messages?beta=true with anthropic-beta headers and top-level extras."""
    engine, url = guarded
    msg = client(url).beta.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=user("hi"),
                                           betas=["interleaved-thinking-2025-05-14"],
                                           extra_body={"context_management": {"edits": []}})
    assert msg.content[0].text == "ok" and engine.seen[-1]["context_management"] == {"edits": []}


def test_tool_choice_tool_forwards_only_that_tool_required(guarded):
    engine, url = guarded
    msg = client(url).messages.create(model="m", max_tokens=50, tools=TOOLS, messages=user("MODE=tool_use"),
                                      tool_choice={"type": "tool", "name": "run_bash"})
    sent = engine.seen[-1]
    assert [t["name"] for t in sent["tools"]] == ["run_bash"] and sent["tool_choice"] == {"type": "any"}
    assert [b.name for b in msg.content] == ["run_bash"]


def test_tool_choice_any_forwards_every_tool(guarded):
    engine, url = guarded
    msg = client(url).messages.create(model="m", max_tokens=50, tools=TOOLS, messages=user("MODE=tool_use"),
                                      tool_choice={"type": "any"})
    assert engine.seen[-1]["tools"] == TOOLS and engine.seen[-1]["tool_choice"] == {"type": "any"}
    assert msg.stop_reason == "tool_use" and [b.type for b in msg.content] == ["tool_use"]


def test_tool_choice_none_forwards_no_tools(guarded):
    engine, url = guarded
    msg = client(url).messages.create(model="m", max_tokens=50, tools=TOOLS, messages=user("MODE=tool_use"),
                                      tool_choice={"type": "none"})
    assert "tools" not in engine.seen[-1] and "tool_choice" not in engine.seen[-1]
    assert [b.name for b in msg.content] == ["none_declared"]  # the scripted engine shows it had no tools


def test_thinking_and_is_error_rewrites(guarded):
    engine, url = guarded
    history = [{"role": "user", "content": "go"},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "run_bash", "input": {}},
                                                 {"type": "tool_use", "id": "t2", "name": "run_bash", "input": {}}]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": "boom"},
                   {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": [
                       {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "no"}}]}]}]
    client(url).messages.create(model="m", max_tokens=5000, tools=TOOLS, messages=history,
                                thinking={"type": "disabled"}, extra_body={"chat_template_kwargs": {"x": 1}})
    sent = engine.seen[-1]
    assert sent["chat_template_kwargs"] == {"x": 1, "enable_thinking": False}
    r1, r2 = sent["messages"][2]["content"]
    assert r1["content"] == "[tool error] boom"
    assert r2["content"] == [{"type": "text", "text": "[tool error] "}, {"type": "text", "text": "no"}]
    client(url).messages.create(model="m", max_tokens=5000, messages=user("hi"),
                                thinking={"type": "enabled", "budget_tokens": 1024})
    assert engine.seen[-1]["chat_template_kwargs"] == {"enable_thinking": True}


@pytest.mark.parametrize("mode", ["drop", "no_stop", "error"])
def test_a_broken_engine_stream_is_an_error_not_end_turn(guarded, mode):
    engine, url = guarded
    events = sse_events(url, {"model": "m", "max_tokens": 5, "messages": user(f"MODE={mode}")})
    names = [n for n, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    err = events[-1][1]
    assert err["type"] == "error" and err["error"]["type"] == "api_error", err
    assert all(d.get("delta", {}).get("stop_reason") != "end_turn" for _, d in events)
    with pytest.raises(anthropic.APIStatusError):
        with client(url).messages.stream(model="m", max_tokens=5, messages=user(f"MODE={mode}")) as s:
            s.get_final_message()


def test_engine_down_is_a_502_api_error(tmp_path):
    from cardforge.serve.process import free_port

    with anthropic_bridge(f"http://127.0.0.1:{free_port()}") as guard:
        with pytest.raises(anthropic.InternalServerError) as err:
            client(guard.base_url).messages.create(model="m", max_tokens=5, messages=user("hi"))
    assert err.value.status_code == 502 and err.value.body["error"]["type"] == "api_error"
