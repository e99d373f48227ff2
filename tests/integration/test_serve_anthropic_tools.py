"""tool_use end to end through the Anthropic bridge: the official `anthropic` client -> bridge subprocess ->
a scripted OpenAI-compatible fake backend (http.server on 127.0.0.1) that answers with our Qwen3 markup in
`content` (a backend without reasoning/tool parsers). The bridge must read it with the chat contract's
parser: stop_reason tool_use, tool_use blocks equal to parse_assistant's calls, input_json_delta events."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

anthropic = pytest.importorskip("anthropic")

from cardforge.core.chat import Message, ToolCall, encode, parse_assistant  # noqa: E402
from cardforge.serve.anthropic.launch import anthropic_bridge  # noqa: E402

OAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "run_python", "description": "Run Python", "parameters": {
        "type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}},
]
TOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"],
          "input_schema": t["function"]["parameters"]} for t in OAI_TOOLS]
CALLS = [ToolCall("get_weather", {"city": "Paris", "days": 2}), ToolCall("get_weather", {"city": "1984"}),
         ToolCall("run_python", {"code": "print(sum([1, 2]))\nprint('<ok>')"})]


@pytest.fixture(scope="module")
def content(tiny_model_dir) -> str:
    """The assistant turn as the chat contract renders it, with the <think> opener a backend returns when
    its template leaves the opener to the model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = encode([Message("user", "Weather in Paris, and 1+2?"),
                  Message("assistant", "Checking both.", "Two cities, then code.", list(CALLS))], tok, OAI_TOOLS)
    span = enc.spans[0]
    return "<think>\n" + enc.text[span.char_start:span.char_end].removesuffix("<|im_end|>")


@pytest.fixture(scope="module")
def backend(content):
    """A scripted OpenAI chat-completions server: always answers `content`, JSON or SSE in 7-char chunks."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            usage = {"prompt_tokens": 50, "completion_tokens": 40}
            if not body.get("stream"):
                out = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{
                    "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                    "usage": usage}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": content[i:i + 7]},
                                    "finish_reason": None}]} for i in range(0, len(content), 7)]
            chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": usage}]
            for c in chunks:
                self.wfile.write(f"data: {json.dumps({'id': 'chatcmpl-1', **c})}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def client(backend):
    with anthropic_bridge(backend[0]) as bridge:
        yield anthropic.Anthropic(base_url=bridge.base_url, api_key="unused", max_retries=0)


def expected(content: str) -> list[tuple[str, dict]]:
    calls = parse_assistant(content, OAI_TOOLS).tool_calls
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in CALLS]
    return [(c.name, c.arguments) for c in calls]


def test_tool_use_non_streaming(client, backend, content):
    msg = client.messages.create(model="distill", max_tokens=256, tools=TOOLS,
                                 messages=[{"role": "user", "content": "Weather in Paris, and 1+2?"}])
    assert msg.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in msg.content if b.type == "tool_use"] == expected(content)
    assert msg.content[3].input == {"city": "1984"}  # a string by the tool schema, as the parser types it
    assert [b.type for b in msg.content[:2]] == ["thinking", "text"] and msg.content[1].text == "Checking both."
    assert backend[1][-1]["tools"] == OAI_TOOLS and "stream" not in backend[1][-1]


def test_tool_use_streaming(client, backend, content):
    with client.messages.stream(model="distill", max_tokens=256, tools=TOOLS,
                                messages=[{"role": "user", "content": "Weather in Paris, and 1+2?"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [e for e in events if e.type in ("message_start", "content_block_start", "content_block_delta",
                                           "content_block_stop", "message_delta", "message_stop")]
    assert raw[0].type == "message_start" and [e.type for e in raw[-2:]] == ["message_delta", "message_stop"]
    json_deltas = [e for e in raw if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    starts = [e.content_block for e in raw if e.type == "content_block_start"]
    assert [b.type for b in starts] == ["thinking", "text", "tool_use", "tool_use", "tool_use"]
    assert len(json_deltas) == 3 and {e.index for e in json_deltas} == {2, 3, 4}
    assert raw[-2].delta.stop_reason == "tool_use" and final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == expected(content)
    assert final.content[0].thinking == "Two cities, then code." and final.content[1].text == "Checking both."
    assert final.usage.output_tokens == 40 and backend[1][-1]["stream"] is True
