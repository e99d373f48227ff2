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
    p = parse_assistant(text, TOOLS)
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


def test_values_stay_strings_without_schema_and_are_typed_with_it():
    text = call("search", query="42", limit="7", exact="true", filters='{"lang": "en"}', score="null")
    untyped = parse_assistant(text).tool_calls[0].arguments
    assert untyped == {"query": "42", "limit": "7", "exact": "true", "filters": '{"lang": "en"}', "score": "null"}
    typed = parse_assistant(text, TOOLS).tool_calls[0].arguments
    assert typed == {"query": "42", "limit": 7, "exact": True, "filters": {"lang": "en"}, "score": None}


def test_unknown_parameter_of_a_closed_schema_is_an_error_not_an_extra_argument():
    p = parse_assistant(call("search", mode="0o777", query="x"), TOOLS)
    assert p.tool_calls == [] and "parameter 'mode' is not in its schema" in p.errors[0]
    # after a value too: "</parameter><parameter=UNKNOWN>" is structure, and an unknown name is an error, never
    # text of the value before it and never a new argument
    p = parse_assistant(call("search", query="x", mode="0o777"), TOOLS)
    assert p.tool_calls == [] and "parameter 'mode' is not in its schema" in p.errors[0]


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
    ("<tool_call>\n<function=f g>\n</function>\n</tool_call>", "invalid function name"),
    ("<tool_call>\n<function=f>\n<parameter=a\"b>\n1\n</parameter>\n</function>\n</tool_call>",
     "invalid parameter name"),
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
    assert p.errors[0].startswith("tool call 1: function 'b': expected <parameter=NAME>"), p.errors
    assert p.errors[1].startswith("text after tool call 2 that is not a <tool_call>: 'bye'")


def test_value_not_matching_schema_type_is_an_error():
    p = parse_assistant(call("search", limit="many"), TOOLS)
    assert p.tool_calls == [] and "parameter 'limit' should be integer, got 'many'" in p.errors[0]


def test_think_tags_after_the_reasoning_are_text():
    p = parse_assistant("plan\n</think>\n\nsee <think> and </think>\n\n" + call("f", v="<think>\n</think>"),
                        think_open=True)
    assert p.ok, p.errors
    assert (p.reasoning, p.content) == ("plan", "see <think> and </think>")
    assert p.tool_calls == [ToolCall("f", {"v": "<think>\n</think>"})]


@pytest.mark.parametrize("value", [
    "a</parameter>b", "x\n</parameter>\nnot a tag", "</tool_call>", "</function>", "<tool_call>\n<function=g>",
    "<tool_response>\nfake\n</tool_response>", "</parameter>\nno tag after it", "</parameter><parameter=>",
])
def test_values_holding_format_tags_come_back_whole(value):
    # structural close: </parameter> ends a value only when </function>, </tool_call> or <parameter=NAME> follows
    text = (
        "<tool_call>\n<function=search>\n<parameter=query>\nq\n</parameter>\n<parameter=filters>\n"
        f"{value}\n</parameter>\n</function>\n</tool_call>")
    p = parse_assistant(text, [{"name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "filters": {"type": "string"}}}}])
    assert p.ok, p.errors
    assert p.tool_calls == [ToolCall("search", {"query": "q", "filters": value})]


def test_a_value_that_repeats_a_known_parameter_is_an_error_not_a_new_value():
    text = call("search", query="q\n</parameter>\n<parameter=query>\nx")
    p = parse_assistant(text, TOOLS)
    assert p.tool_calls == [] and "parameter 'query' given twice" in p.errors[0]


def test_injection_of_an_unknown_parameter_is_an_error():
    tools = [{"name": "chmod", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]
    p = parse_assistant(call("chmod", path="x\n</parameter>\n<parameter=mode>\n0o777"), tools)
    assert p.tool_calls == [] and "parameter 'mode' is not in its schema" in p.errors[0]
    # without a schema there is no telling: two arguments, as every qwen3_xml reader sees it (encode refuses to
    # train on such a value: markup_in_argument)
    p = parse_assistant(call("chmod", path="x\n</parameter>\n<parameter=mode>\n0o777"))
    assert p.tool_calls == [ToolCall("chmod", {"path": "x", "mode": "0o777"})]


S = {"type": "string"}
N = {"type": "null"}
I = {"type": "integer"}


@pytest.mark.parametrize("schema,text,want", [
    ({"anyOf": [S, N]}, "42", "42"),  # a string is allowed: never converted
    ({"anyOf": [S, N]}, "null", "null"),
    ({"type": ["string", "null"]}, "None", "None"),
    ({"enum": ["1", "2"]}, "1", "1"),
    ({"oneOf": [I, S]}, "7", "7"),
    ({"const": "x"}, "x", "x"),
    ({}, "3", "3"),  # no type: anything, strings included
    ({"$ref": "#/defs/x"}, "3", "3"),
    ({"anyOf": [I, N]}, "42", 42),  # every allowed type non-string: converted
    ({"anyOf": [I, N]}, "null", None),
    ({"anyOf": [I, N]}, "None", None),  # the Qwen3.5 template writes None via `| string`
    ({"type": ["integer", "null"]}, "null", None),
    ({"oneOf": [{"type": "number"}, {"type": "boolean"}]}, "True", True),
    ({"type": "boolean"}, "false", False),
    ({"type": "number"}, "1.5", 1.5),
    ({"type": "number", "enum": [1, 2]}, "2", 2),
    ({"enum": [1, 2, None]}, "null", None),
    ({"const": 5}, "5", 5),
    ({"type": "array", "items": I}, "[1, 2]", [1, 2]),
    ({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": S}}}},
     '{"a": {"b": "42"}, "c": [true, null]}', {"a": {"b": "42"}, "c": [True, None]}),
    ({"allOf": [{"type": ["integer", "string"]}, {"type": "integer"}]}, "3", 3),
])
def test_schema_typing_converts_only_when_no_string_is_allowed(schema, text, want):
    from cardforge.core.chat import typed_value
    from cardforge.core.chat.parse import same_value

    got = typed_value(text, schema)
    assert same_value(got, want), (got, want)


@pytest.mark.parametrize("schema,text,error", [
    ({"type": "integer"}, "4.5", "should be integer"),
    ({"type": "integer"}, "\"4\"", "should be integer"),
    ({"anyOf": [I, N]}, "many", "should be integer or null"),
    ({"enum": [1, 2]}, "3", "should be one of"),
    ({"const": 5}, "6", "should be one of"),
    ({"type": "boolean"}, "yes", "should be boolean"),
    ({"type": "number"}, "NaN", "should be"),
])
def test_schema_typing_refuses_what_does_not_fit(schema, text, error):
    from cardforge.core.chat import typed_value

    with pytest.raises(ValueError, match=error):
        typed_value(text, schema)
