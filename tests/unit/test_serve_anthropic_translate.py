"""The guard's pure parts: Anthropic's request rules (protocol.py), the gap rewrites for the native endpoint
(translate.py) and the SSE relay (stream.py), without a server."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from pydantic import ValidationError

from cardforge.serve.anthropic.protocol import CountTokensRequest, MessagesRequest
from cardforge.serve.anthropic.stream import StreamGuard, parse_sse, sse
from cardforge.serve.anthropic.translate import (
    TOOL_ERROR, engine_error, error_body, fix_message, native_body, prefill,
)

TOOLS = [{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "input_schema": {"type": "object"},
                                                               "cache_control": {"type": "ephemeral"}}]
USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "a", "input": {}}]}
RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}


def req(**kw) -> dict:
    return {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **kw}


def check(body: dict, cls=MessagesRequest):
    return cls.model_validate(body)


def refused(body: dict, cls=MessagesRequest) -> str:
    with pytest.raises(ValidationError) as e:
        cls.model_validate(body)
    return str(e.value)


# --- what Anthropic accepts and refuses -------------------------------------------------------------------

def test_claude_code_shapes_are_accepted():
    r = check(req(system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}], tools=TOOLS,
                  tool_choice={"type": "auto"}, metadata={"user_id": "u"}, stream=True,
                  messages=[{"role": "user", "content": [{"type": "text", "text": "q", "cache_control": {}}]},
                            {**USE, "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                                *USE["content"]]},
                            {"role": "user", "content": [
                                {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
                                    {"type": "text", "text": "e"},
                                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                 "data": "AA=="}}]},
                                {"type": "text", "text": "next"}]},
                            {"role": "assistant", "content": "Prefill"}]))
    assert r.stream and r.model_extra["metadata"] == {"user_id": "u"} and prefill(r) == "Prefill"


@pytest.mark.parametrize("field, value, where", [
    ("max_tokens", "5", "max_tokens"), ("max_tokens", 0, "max_tokens"), ("max_tokens", 2.5, "max_tokens"),
    ("max_tokens", True, "max_tokens"), ("temperature", 1.5, "temperature"), ("temperature", -0.1, "temperature"),
    ("temperature", "0.5", "temperature"), ("top_p", 1.01, "top_p"), ("top_k", -1, "top_k"),
    ("stream", "yes", "stream"), ("stop_sequences", "STOP", "stop_sequences"), ("messages", [], "messages"),
    ("tool_choice", {"type": "tool"}, "tool_choice"), ("tool_choice", {"type": "sometimes"}, "tool_choice"),
    ("thinking", {"type": "enabled"}, "budget_tokens"), ("thinking", {"type": "enabled", "budget_tokens": 10},
                                                         "budget_tokens"),
])
def test_bad_fields_are_refused(field, value, where):
    assert where in refused(req(**{field: value}))


def test_missing_max_tokens_is_refused_but_count_tokens_needs_none():
    body = req()
    del body["max_tokens"]
    assert "max_tokens" in refused(body)
    assert check(body, CountTokensRequest).messages[0].content == "hi"


def test_thinking_budget_must_be_below_max_tokens():
    assert "less than max_tokens" in refused(req(max_tokens=1024, thinking={"type": "enabled", "budget_tokens": 1024}))
    check(req(max_tokens=1025, thinking={"type": "enabled", "budget_tokens": 1024}))
    check(req(thinking={"type": "disabled"}))


@pytest.mark.parametrize("messages, says", [
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}], "first message"),
    ([{"role": "user", "content": "q"}, USE], "without tool_result"),
    ([{"role": "user", "content": "q"}, USE, {"role": "user", "content": "no result"}], "t1"),
    ([RESULT], "unexpected tool_use_id"),
    ([{"role": "user", "content": "q"}, USE, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t2", "content": "x"}]}], "t2"),
    ([{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "a", "input": {}}]}],
     "only be in assistant"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}], "only be in user"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "non-empty"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "ends in space "}], "trailing whitespace"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "a", "input": {}}, {"type": "tool_use", "id": "t", "name": "a",
                                                                  "input": {}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}], "unique"),
    ([{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}], "only be in assistant"),
    ([{"role": "system", "content": "x"}], "role"),
])
def test_conversation_rules(messages, says):
    assert says in refused(req(messages=messages))


def test_well_paired_history_and_tool_choice_names():
    check(req(messages=[{"role": "user", "content": "q"}, USE, RESULT], tools=TOOLS))
    assert "not in tools" in refused(req(tools=TOOLS, tool_choice={"type": "tool", "name": "zz"}))
    assert "needs tools" in refused(req(tool_choice={"type": "any"}))
    assert "unique" in refused(req(tools=[TOOLS[0], TOOLS[0]]))
    assert "name" in refused(req(tools=[{"name": "has space", "input_schema": {}}]))


# --- the gap rewrites -------------------------------------------------------------------------------------

def rewrite(body: dict, model=None) -> dict:
    return native_body(body, check(body), model)


def test_thinking_goes_to_the_template_and_unknown_fields_stay():
    out = rewrite(req(thinking={"type": "disabled"}, chat_template_kwargs={"k": 1}, metadata={"user_id": "u"}))
    assert out["chat_template_kwargs"] == {"k": 1, "enable_thinking": False} and out["metadata"] == {"user_id": "u"}
    assert rewrite(req(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024})
                   )["chat_template_kwargs"] == {"enable_thinking": True}
    assert "chat_template_kwargs" not in rewrite(req(thinking={"type": "adaptive"}))
    assert rewrite(req(), model="served")["model"] == "served"


def test_tool_choice_rewrites():
    assert "tools" not in rewrite(req(tools=TOOLS, tool_choice={"type": "none"}))
    out = rewrite(req(tools=TOOLS, tool_choice={"type": "tool", "name": "b"}))
    assert out["tools"] == [TOOLS[1]] and out["tool_choice"] == {"type": "any"}
    assert rewrite(req(tools=TOOLS, tool_choice={"type": "any"}))["tools"] == TOOLS  # native does any itself


def test_server_tools_are_accepted_but_not_forwarded():
    web = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    out = rewrite(req(tools=[web, *TOOLS]))
    assert out["tools"] == TOOLS
    assert "tools" not in rewrite(req(tools=[web], tool_choice={"type": "auto"}))
    assert "input_schema" in refused(req(tools=[{"name": "mine"}]))
    assert "not in tools" in refused(req(tools=[web, *TOOLS], tool_choice={"type": "tool", "name": "web_search"}))


def test_is_error_and_documents_reach_the_engine():
    body = req(messages=[{"role": "user", "content": "q"},
                         {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}", "name": "a",
                                                            "input": {}} for i in range(4)]},
                         {"role": "user", "content": [
                             {"type": "tool_result", "tool_use_id": "t0", "is_error": True, "content": "boom"},
                             {"type": "tool_result", "tool_use_id": "t1", "is_error": True},
                             {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": [
                                 {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]},
                             {"type": "tool_result", "tool_use_id": "t3", "is_error": False, "content": [
                                 {"type": "document", "title": "T", "source": {"type": "text", "data": "doc"}}]},
                             {"type": "document", "source": {"type": "text", "data": "top"}}]}])
    before = json.dumps(body)
    r0, r1, r2, r3, doc = rewrite(body)["messages"][2]["content"]
    assert json.dumps(body) == before  # the client's body is not mutated
    assert r0["content"] == TOOL_ERROR + "boom" and r1["content"] == TOOL_ERROR
    assert r2["content"][0] == {"type": "text", "text": TOOL_ERROR} and r2["content"][1]["type"] == "image"
    assert r3["content"] == [{"type": "text", "text": "T\n\ndoc"}] and doc == {"type": "text", "text": "top"}


def test_answer_fixes():
    r = check(req(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is"}]))
    msg = {"content": [{"type": "thinking", "thinking": "t"}, {"type": "text", "text": "The answer is 4."}],
           "stop_reason": "end_turn", "stop_sequence": "STOP"}
    fixed = fix_message(msg, r)
    assert fixed["content"][1]["text"] == " 4." and fixed["stop_reason"] == "stop_sequence"
    other = fix_message({"content": [{"type": "text", "text": "Something else"}], "stop_reason": "end_turn",
                         "stop_sequence": None}, r)
    assert other["content"][0]["text"] == "Something else" and other["stop_reason"] == "end_turn"


def test_engine_errors_get_anthropics_shape():
    assert engine_error(400, {"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}}) == \
        (400, error_body("invalid_request_error", "engine returned 400: bad"))
    assert engine_error(503, {"error": {"message": "loading"}})[1]["error"]["type"] == "overloaded_error"
    assert engine_error(500, "plain text")[1]["error"]["type"] == "api_error"
    assert engine_error(501, {"error": {"message": "no"}})[0] == 400


# --- the SSE relay ----------------------------------------------------------------------------------------

def stream_of(texts: list[str], stop_sequence=None, stop=True) -> list[tuple[str, dict]]:
    evs = [("message_start", {"type": "message_start", "message": {"id": "m"}}),
           ("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "thinking", "thinking": ""}}),
           ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "thinking_delta", "thinking": "The answer"}}),
           ("content_block_stop", {"type": "content_block_stop", "index": 0}),
           ("content_block_start", {"type": "content_block_start", "index": 1,
                                    "content_block": {"type": "text", "text": ""}})]
    evs += [("content_block_delta", {"type": "content_block_delta", "index": 1,
                                     "delta": {"type": "text_delta", "text": t}}) for t in texts]
    evs += [("content_block_stop", {"type": "content_block_stop", "index": 1}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                   "stop_sequence": stop_sequence}})]
    return evs + ([("message_stop", {"type": "message_stop"})] if stop else [])


def relay(events, pre="") -> list[tuple[str, dict]]:
    g = StreamGuard(pre)
    return [e for name, data in events for e in g.feed(name, data)] + g.finish()


def text_of(events) -> str:
    return "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta"
                   and d["delta"]["type"] == "text_delta")


def test_a_repeated_prefill_is_cut_however_the_stream_splits_it():
    pre, answer = "The answer is", "The answer is 42, surely."
    rng = random.Random(0)
    cuts = [sorted(rng.sample(range(1, len(answer)), k)) for k in (1, 2, 3, 5, 10) for _ in range(20)]
    for cut in cuts + [list(range(1, len(answer)))]:
        pieces = [answer[i:j] for i, j in itertools.pairwise([0, *cut, len(answer)])]
        out = relay(stream_of(pieces), pre)
        assert text_of(out) == " 42, surely.", pieces
        assert [n for n, _ in out][-1] == "message_stop"
    # not a repeat: everything the model wrote is kept, including a partial match held back for a while
    assert text_of(relay(stream_of(["The ans", "wer was 7"]), pre)) == "The answer was 7"
    assert text_of(relay(stream_of(["The ", "cat"]), pre)) == "The cat"
    assert text_of(relay(stream_of(["The answer is 1"]))) == "The answer is 1"  # no prefill: untouched


def test_stop_sequence_and_the_held_message_delta():
    out = relay(stream_of(["hi"], stop_sequence="STOP"))
    names = [n for n, _ in out]
    assert names[-2:] == ["message_delta", "message_stop"] and out[-2][1]["delta"]["stop_reason"] == "stop_sequence"


def test_a_stream_without_message_stop_ends_in_an_error():
    out = relay(stream_of(["partial"], stop=False))
    assert [n for n, _ in out][-1] == "error" and "message_delta" not in [n for n, _ in out]
    assert out[-1][1]["error"]["type"] == "api_error"
    cut = relay(stream_of(["x"])[:6])  # the connection died mid-block
    assert cut[-1][0] == "error" and text_of(cut) == "x"


def test_engine_error_events_are_reshaped_once():
    evs = stream_of(["x"])[:6] + [("error", {"code": 500, "message": "slot died", "type": "server_error"})]
    out = relay(evs)
    assert [n for n, _ in out].count("error") == 1
    assert out[-1][1] == error_body("api_error", "engine returned 500: slot died")


def test_sse_round_trip():
    evs = stream_of(["a\nb", "ü"])
    wire = "".join(sse(e) for e in evs)
    assert list(parse_sse(wire.split("\n"))) == evs


# --- properties (hypothesis) ------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(pre=TEXT, answer=TEXT, cuts=st.lists(st.integers(0, 80), max_size=8))
def test_prefill_cut_property(pre, answer, cuts):
    """However the engine chunks its text, the client gets the answer without ONE leading copy of the
    prefill when (and only when) the answer starts with it (an answer that is only a piece of the prefill
    is taken as its repeat)."""
    pos = sorted({min(c, len(answer)) for c in cuts} | {0, len(answer)})
    pieces = [answer[i:j] for i, j in itertools.pairwise(pos)] or [""]
    got = text_of(relay(stream_of(pieces), pre))
    if pre and answer.startswith(pre):
        assert got == answer[len(pre):]
    elif pre and pre.startswith(answer):
        assert got == ""
    else:
        assert got == answer


@st.composite
def conversations(draw):
    """A well-formed tool-using conversation: user turn, then rounds of assistant tool_use -> user results."""
    msgs = [{"role": "user", "content": "start"}]
    n_ids = 0
    for _ in range(draw(st.integers(0, 4))):
        k = draw(st.integers(1, 3))
        ids = [f"toolu_{n_ids + i}" for i in range(k)]
        n_ids += k
        msgs.append({"role": "assistant", "content": [{"type": "tool_use", "id": i, "name": "a", "input": {}}
                                                      for i in ids]})
        results = [{"type": "tool_result", "tool_use_id": i, "content": "r", "is_error": draw(st.booleans())}
                   for i in draw(st.permutations(ids))]
        msgs.append({"role": "user", "content": results + ([{"type": "text", "text": "more"}]
                                                           if draw(st.booleans()) else [])})
    return msgs


@settings(max_examples=200, deadline=None)
@given(msgs=conversations(), data=st.data())
def test_pairing_property(msgs, data):
    check(req(messages=msgs, tools=TOOLS))
    rounds = [i for i, m in enumerate(msgs) if m["role"] == "user" and isinstance(m["content"], list)]
    if not rounds:
        return
    i = data.draw(st.sampled_from(rounds))
    blocks = [b for b in msgs[i]["content"] if b["type"] == "tool_result"]
    drop = data.draw(st.sampled_from(blocks))
    broken = [*msgs[:i], {**msgs[i], "content": [b for b in msgs[i]["content"] if b is not drop] or "x"},
              *msgs[i + 1:]]
    assert drop["tool_use_id"] in refused(req(messages=broken, tools=TOOLS))
    stray = [*msgs[:i], {**msgs[i], "content": [*msgs[i]["content"], {**drop, "tool_use_id": "toolu_x"}]},
             *msgs[i + 1:]]
    assert "toolu_x" in refused(req(messages=stray, tools=TOOLS))
