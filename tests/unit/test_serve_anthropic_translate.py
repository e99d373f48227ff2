"""Messages API <-> OpenAI chat completions: request mapping, responses, the streaming event machine."""

from __future__ import annotations

import json

import pytest
from cardforge.core.chat import Message, ToolCall, encode, parse_assistant
from pydantic import ValidationError

from cardforge.serve.anthropic.protocol import MessagesRequest
from cardforge.serve.anthropic.stream import StreamTranslator, sse
from cardforge.serve.anthropic.translate import TranslationError, from_openai, to_openai
from cardforge.serve.speculation import SpecProbe, assess, stream_timings

TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def req(**kw) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 16, **kw})


def test_request_maps_system_thinking_tools_and_history():
    body = to_openai(req(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
        tools=TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 1024}, stop_sequences=["END"], temperature=0.6, top_k=20,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Need the tool.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "And tomorrow?"}]},
        ]), model="served")
    assert body["model"] == "served" and body["max_tokens"] == 16
    assert body["messages"] == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},  # before the user's text: OpenAI order
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather", "parameters": TOOLS[0]["input_schema"]}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["stop"] == ["END"] and body["temperature"] == 0.6 and body["top_k"] == 20
    assert "stream" not in body


def test_request_named_tool_choice_stream_and_images():
    body = to_openai(req(stream=True, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"},
                         thinking={"type": "disabled"}, messages=[{"role": "user", "content": [
                             {"type": "text", "text": "what is this"},
                             {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]}]))
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}


def test_tool_error_results_are_marked():
    body = to_openai(req(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}]}]))
    assert body["messages"] == [{"role": "tool", "tool_call_id": "t", "content": "[tool error] boom"}]


@pytest.mark.parametrize("bad, where", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "t"}]}, "input_schema"),
])
def test_malformed_requests_fail_validation(bad, where):
    with pytest.raises(ValidationError, match=where):
        MessagesRequest.model_validate({"model": "m", "max_tokens": 8, **bad})


def test_untranslatable_block_is_a_clear_error():
    with pytest.raises(TranslationError, match="user message cannot carry a tool_use"):
        to_openai(req(messages=[{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]))


def test_response_with_thinking_text_and_tool_call():
    msg = from_openai({"id": "abc", "choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "reasoning_content": "hmm", "content": "Calling.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 10}}}, "m")
    assert msg["id"] == "msg_abc" and msg["model"] == "m" and msg["stop_reason"] == "tool_use"
    assert msg["content"] == [{"type": "thinking", "thinking": "hmm", "signature": ""},
                              {"type": "text", "text": "Calling."},
                              {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert msg["usage"] == {"input_tokens": 20, "output_tokens": 9, "cache_read_input_tokens": 10,
                            "cache_creation_input_tokens": 0}


@pytest.mark.parametrize("finish, want", [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")])
def test_stop_reasons(finish, want):
    assert from_openai({"choices": [{"finish_reason": finish, "message": {"content": "x"}}]}, "m")["stop_reason"] == want


def chunk(delta=None, finish=None, **extra):
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_stream_event_sequence_thinking_text_tool_use():
    tr = StreamTranslator("m")
    events = tr.start()
    for c in [chunk({"role": "assistant", "content": None}), chunk({"reasoning_content": "th"}),
              chunk({"reasoning_content": "ink"}), chunk({"content": "Hi"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
              chunk(finish="tool_calls"),
              {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}]:
        events += tr.feed(c)
    events += tr.finish()
    kinds = [(n, d.get("delta", d.get("content_block", {})).get("type")) for n, d in events]
    assert kinds == [
        ("message_start", None), ("ping", None),
        ("content_block_start", "thinking"), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"), ("content_block_stop", None),
        ("content_block_start", "text"), ("content_block_delta", "text_delta"), ("content_block_stop", None),
        ("content_block_start", "tool_use"), ("content_block_delta", "input_json_delta"),
        ("content_block_delta", "input_json_delta"), ("content_block_stop", None),
        ("message_delta", None), ("message_stop", None)]
    assert [d["index"] for n, d in events if n == "content_block_start"] == [0, 1, 2]
    partial = "".join(d["delta"]["partial_json"] for n, d in events if d.get("delta", {}).get("type") == "input_json_delta")
    assert json.loads(partial) == {"city": "Paris"}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == 12 and delta["usage"]["output_tokens"] == 7
    assert sse(events[-1]) == 'event: message_stop\ndata: {"type": "message_stop"}\n\n'


def test_stream_timings_come_from_the_last_chunk():
    lines = [b'data: {"choices":[{"delta":{"content":"a"}}]}', b"",
             b'data: {"choices":[],"timings":{"draft_n":9,"draft_n_accepted":3}}', b"data: [DONE]"]
    assert stream_timings(lines) == {"draft_n": 9, "draft_n_accepted": 3}
    assert stream_timings([b'data: {"choices":[]}', b"data: [DONE]"]) is None


def test_mtp_verdicts():
    p = lambda n, a: SpecProbe(n, a, 16, 10.0, 1.0)  # noqa: E731
    kw = {"has_mtp": True, "mtp_enabled": True, "min_accept_rate": 0.05}
    assert assess(p(0, 0), **kw).status == "no_drafts" and assess(p(0, 0), **kw).warn
    assert assess(p(40, 0), **kw).status == "low_acceptance"
    assert assess(p(40, 20), **kw).status == "ok" and p(40, 20).accept_rate == 0.5
    assert assess(None, has_mtp=True, mtp_enabled=False, min_accept_rate=0.05).status == "disabled"
    assert not assess(None, has_mtp=False, mtp_enabled=True, min_accept_rate=0.05).warn


# --- backend content carrying our Qwen3 markup: read with the chat contract's parser (issue 3 item 2) ---

OAI_TOOLS = [
    {"type": "function", "function": {"name": "search", "description": "Search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "run_python", "description": "Run code", "parameters": {
        "type": "object", "properties": {"code": {"type": "string"}, "timeout": {"type": "number"},
                                         "env": {"type": "object"}}}}},
]
CALLS = [ToolCall("search", {"query": "42", "limit": 3}),
         ToolCall("run_python", {"code": "x = '<b>'\nprint(x, 1 < 2)", "timeout": 2.5, "env": {"A": "1"}}),
         ToolCall("search", {"query": "café 日本語", "limit": 10})]


@pytest.fixture(scope="module")
def rendered(tiny_model_dir) -> dict[str, str]:
    """One assistant turn with three tool calls rendered by the chat contract (encode: the model's own
    template), as a backend without reasoning/tool parsers returns it: the generated text after the
    generation prompt ("REASONING\\n</think>\\n\\nCONTENT\\n\\n<tool_call>..."), and the same with the
    opening <think> (templates whose generation prompt does not hold it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    turn = [Message("user", "Find it and run it."),
            Message("assistant", "Let me look that up.", "First search, then run code.", list(CALLS))]
    enc = encode(turn, tok, OAI_TOOLS)
    span = enc.spans[0]
    generated = enc.text[span.char_start:span.char_end].removesuffix("<|im_end|>")
    assert generated.count("<tool_call>") == 3 and "</think>" in generated and not generated.startswith("<think>")
    parsed = parse_assistant(generated, OAI_TOOLS)  # the contract's round trip holds before we test the bridge
    assert parsed.ok and parsed.tool_calls == CALLS, parsed.errors
    return {"no_opener": generated, "opener": "<think>\n" + generated}


def rebuild(events) -> list[dict]:
    """The content blocks a client assembles from the stream (and checks of the event grammar)."""
    blocks, open_idx = [], None
    for name, data in events:
        if name == "content_block_start":
            assert open_idx is None and data["index"] == len(blocks)
            blocks.append({**data["content_block"], "_json": ""})
            open_idx = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_idx
            d, b = data["delta"], blocks[open_idx]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                b["thinking"] += d["thinking"]
            else:
                assert d["type"] == "input_json_delta" and b["type"] == "tool_use"
                b["_json"] += d["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_idx
            open_idx = None
    assert open_idx is None
    for b in blocks:
        raw = b.pop("_json")
        if b["type"] == "tool_use":
            b["input"] = json.loads(raw or "{}")
    return blocks


def stream_content(content: str, sizes, tools=OAI_TOOLS):
    tr = StreamTranslator("m", tools=tools)
    events, pos, i = tr.start(), 0, 0
    while pos < len(content):
        n = sizes[i % len(sizes)]
        events += tr.feed(chunk({"content": content[pos:pos + n]}))
        pos, i = pos + n, i + 1
    events += tr.feed(chunk(finish="stop"))
    return events + tr.finish()


def tool_uses(blocks) -> list[tuple[str, dict]]:
    return [(b["name"], b["input"]) for b in blocks if b["type"] == "tool_use"]


def expected(content: str) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in parse_assistant(content, OAI_TOOLS).tool_calls]


@pytest.mark.parametrize("variant", ["no_opener", "opener"])
def test_content_tool_calls_become_the_parsers_tool_use_blocks(rendered, variant):
    content = rendered[variant]
    parsed = parse_assistant(content, OAI_TOOLS)
    msg = from_openai({"id": "x", "choices": [{"finish_reason": "stop", "message": {
        "role": "assistant", "content": content}}]}, "m", OAI_TOOLS)
    assert tool_uses(msg["content"]) == expected(content) == [(c.name, c.arguments) for c in CALLS]
    assert tool_uses(msg["content"])[0][1]["query"] == "42"  # typed by the request's schema, as the parser does
    assert [b["type"] for b in msg["content"]] == ["thinking", "text", "tool_use", "tool_use", "tool_use"]
    assert msg["content"][0]["thinking"] == parsed.reasoning == "First search, then run code."
    assert msg["content"][1]["text"] == parsed.content == "Let me look that up."
    assert "<tool_call>" not in json.dumps(msg["content"]) and msg["stop_reason"] == "tool_use"
    ids = [b["id"] for b in msg["content"] if b["type"] == "tool_use"]
    assert len(set(ids)) == 3 and all(i.startswith("toolu_") for i in ids)


@pytest.mark.parametrize("variant", ["no_opener", "opener"])
@pytest.mark.parametrize("sizes", [[1], [2, 7, 3, 11, 1, 5], [10_000]], ids=["char", "mixed", "whole"])
def test_streamed_content_tool_calls_equal_the_parsers(rendered, variant, sizes):
    content = rendered[variant]
    events = stream_content(content, sizes)
    blocks = rebuild(events)
    assert tool_uses(blocks) == expected(content) == [(c.name, c.arguments) for c in CALLS]
    assert sum(1 for _, d in events if d.get("delta", {}).get("type") == "input_json_delta") == 3
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert "<tool_call>" not in json.dumps(blocks) and "</tool_call>" not in json.dumps(blocks)
    if variant == "opener":  # a leading <think> streams as a thinking block: the blocks equal from_openai's
        msg = from_openai({"choices": [{"message": {"content": content}}]}, "m", OAI_TOOLS)
        strip_ids = lambda bs: [{k: v for k, v in b.items() if k != "id"} for b in bs]  # noqa: E731
        assert strip_ids(blocks) == strip_ids(msg["content"])


def test_streamed_calls_are_sent_as_each_closes():
    call = lambda q: f"<tool_call>\n<function=search>\n<parameter=query>\n{q}\n</parameter>\n</function>\n</tool_call>"  # noqa: E731
    tr = StreamTranslator("m", tools=OAI_TOOLS)
    tr.start()
    first = tr.feed(chunk({"content": "Looking.\n\n" + call("a") + "\n" + call("b")[:20]}))
    assert rebuild(first) == [{"type": "text", "text": "Looking."},
                              {"type": "tool_use", "id": rebuild(first)[1]["id"], "name": "search", "input": {"query": "a"}}]
    rest = tr.feed(chunk({"content": call("b")[20:]})) + tr.finish()
    assert [e[1]["content_block"]["name"] for e in rest if e[0] == "content_block_start"] == ["search"]


def test_malformed_content_call_stays_text_and_plain_text_is_untouched():
    bad = "Trying.\n\n<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n</tool_call>"
    msg = from_openai({"choices": [{"finish_reason": "stop", "message": {"content": bad}}]}, "m", OAI_TOOLS)
    assert msg["content"] == [{"type": "text", "text": bad}] and msg["stop_reason"] == "end_turn"
    assert rebuild(stream_content(bad, [3])) == msg["content"]
    plain = "  a < b and <b>bold</b>, <think about it>\n"
    assert rebuild(stream_content(plain, [1])) == [{"type": "text", "text": plain}]
    assert from_openai({"choices": [{"message": {"content": plain}}]}, "m")["content"] == [{"type": "text", "text": plain}]
