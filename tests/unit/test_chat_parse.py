"""parse_assistant: think blocks, qwen3_xml tool calls, typing by schema, and every fault reported."""

from __future__ import annotations

import pytest
from cardforge.core.chat import ToolCall, parse_assistant

TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
    "query": {"type": "string"}, "limit": {"type": "integer"}, "exact": {"type": "boolean"},
    "filters": {"type": "object"}, "score": {"type": ["number", "null"]}}}}}]


def call(name: str, **params: str) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def test_reasoning_content_and_two_calls():
    text = ("<think>\nplan it\n</think>\n\nLet me look.\n\n" + call("search", query="cats", limit="3") + "\n"
            + call("open", url="http://x.y/z?a=1") + "<|im_end|>")
    p = parse_assistant(text)
    assert p.ok, p.errors
    assert (p.reasoning, p.content) == ("plan it", "Let me look.")
    assert p.tool_calls == [ToolCall("search", {"query": "cats", "limit": 3}), ToolCall("open", {"url": "http://x.y/z?a=1"})]


def test_generation_prompt_already_opened_think():
    p = parse_assistant("step one\n</think>\n\nThe answer is 4.")
    assert (p.reasoning, p.content, p.tool_calls, p.errors) == ("step one", "The answer is 4.", [], [])


def test_plain_content_without_think():
    p = parse_assistant("Hello there.")
    assert (p.reasoning, p.content, p.ok) == ("", "Hello there.", True)


@pytest.mark.parametrize("text,think_open", [("<think>\nhalf a thou", False), ("half a thou", True)])
def test_missing_closing_think_is_reported_not_guessed(text, think_open):
    p = parse_assistant(text, think_open=think_open)
    assert p.reasoning == "half a thou" and p.content == "" and p.tool_calls == []
    assert p.errors == ["missing </think>: the output ended inside the reasoning (truncated?)"]


def test_values_json_decoded_without_schema_and_typed_with_it():
    text = call("search", query="42", limit="7", exact="true", filters='{"lang": "en"}', score="null", raw="not json")
    untyped = parse_assistant(text).tool_calls[0].arguments
    assert untyped == {"query": 42, "limit": 7, "exact": True, "filters": {"lang": "en"}, "score": None,
                       "raw": "not json"}
    typed = parse_assistant(text, TOOLS).tool_calls[0].arguments
    assert typed["query"] == "42"  # declared string: the digits stay text
    assert typed["limit"] == 7 and typed["exact"] is True and typed["filters"] == {"lang": "en"}
    assert typed["score"] is None and typed["raw"] == "not json"  # undeclared: JSON-or-string


def test_multiline_value_keeps_its_own_whitespace():
    p = parse_assistant(call("write", text="  line 1\n\nline 3  "))
    assert p.tool_calls[0].arguments == {"text": "  line 1\n\nline 3  "}


def test_nan_stays_a_string():
    assert parse_assistant(call("f", x="NaN")).tool_calls[0].arguments == {"x": "NaN"}


@pytest.mark.parametrize("text,error", [
    ("<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>", "no closing </tool_call>"),
    ("<tool_call>\n<parameter=a>\n1\n</parameter>\n</tool_call>", "expected <function=NAME>"),
    ("<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>", "missing </function>"),
    ("<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>", "has no </parameter>"),
    ("<tool_call>\n<function=f>\nstray\n</function>\n</tool_call>", "expected <parameter=NAME>"),
    (("<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n<parameter=a>\n2\n</parameter>\n</function>\n"
      "</tool_call>"), "given twice"),
    ("<function=f>\n</function>\n</tool_call>", "without an opening <tool_call>"),
    ("x\n</think>\n<think>", "a second <think>"),
])
def test_malformed_markup_is_an_error_and_the_call_is_dropped(text, error):
    p = parse_assistant(text)
    assert not p.ok and p.tool_calls == []
    assert any(error in e for e in p.errors), p.errors


def test_good_calls_survive_a_bad_neighbour_and_trailing_text_is_reported():
    text = call("a", x="1") + "\n<tool_call>\n<function=b>\nbroken\n</function>\n</tool_call>\n" + call("c") + "\nbye"
    p = parse_assistant(text)
    assert [c.name for c in p.tool_calls] == ["a", "c"]
    assert len(p.errors) == 2
    assert p.errors[0].startswith("tool call 1: function 'b': expected <parameter=NAME>")
    assert p.errors[1].startswith("text after tool call 2 that is not a <tool_call>: 'bye'")


def test_value_not_matching_schema_type_is_an_error():
    p = parse_assistant(call("search", limit="many"), TOOLS)
    assert p.tool_calls == [] and "parameter 'limit' should be integer, got 'many'" in p.errors[0]
