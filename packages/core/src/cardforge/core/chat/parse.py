"""THE parser of assistant output in the Qwen3 style: <think> reasoning + qwen3_xml tool calls.

The data stage (teacher output), the loss-mask round trip tests and the serve/eval side all read
assistant text with `parse_assistant`, so a format drift shows up everywhere at once.

    <think>\\nREASONING\\n</think>\\n\\nCONTENT\\n\\n<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE
    \\n</parameter>\\n</function>\\n</tool_call>\\n<tool_call>...</tool_call>

Rules (why: a guess here would silently train on, or score, something the model did not say):
* The opening <think> may be absent: the generation prompt of our template already holds it, so a server
  returns "REASONING\\n</think>\\n\\nCONTENT". Text before the first </think> is reasoning.
* No </think>: with `think_open=True` (the prompt opened the block) or a leading <think>, the whole text is
  reasoning and an error says the output ended inside it; otherwise the text is plain content.
* A parameter VALUE is the text between <parameter=ARG> and </parameter> less ONE newline each side (the
  template adds exactly those). With a tool schema its declared type decides (a "string" stays raw text,
  so "42" stays "42"); without one, text that parses as JSON is decoded, anything else stays a string.
* Malformed markup (no </tool_call>, no <function=...>, text between or after calls, a duplicate or
  unclosed parameter, a value that does not fit its schema type) is reported in `errors`; that call is
  dropped, never repaired. Calls that parse are kept, so a caller can choose to use them or not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cardforge.core.chat.schema import Message, ToolCall

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FN_CLOSE, PARAM_CLOSE = "</function>", "</parameter>"
# end-of-turn markers a server may leave at the end when it returns special tokens
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
_FN_OPEN = re.compile(r"<function=([^>\n]+)>")
_PARAM_OPEN = re.compile(r"<parameter=([^>\n]+)>")
_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


@dataclass
class ParsedAssistant:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_message(self) -> Message:
        return Message("assistant", self.content, self.reasoning, list(self.tool_calls))


def parse_assistant(text: str, tools: list[dict] | None = None, *, think_open: bool = False) -> ParsedAssistant:
    """Split one assistant output into reasoning, content and tool calls; problems go to `.errors`."""
    out = ParsedAssistant()
    text = _strip_end_markers(text)
    lead = text.lstrip()
    opened = lead.startswith(THINK_OPEN)
    if opened:
        text = lead[len(THINK_OPEN):]
    close = text.find(THINK_CLOSE)
    if close >= 0:
        out.reasoning, rest = text[:close].strip(), text[close + len(THINK_CLOSE):]
        if THINK_CLOSE in rest or THINK_OPEN in rest:
            out.errors.append("a second <think> or </think> after the reasoning block")
    elif opened or think_open:
        out.reasoning, rest = text.strip(), ""
        out.errors.append("missing </think>: the output ended inside the reasoning (truncated?)")
    else:
        rest = text
    first = rest.find(CALL_OPEN)
    if first < 0:
        out.content = rest.strip()
        if CALL_CLOSE in rest or _FN_OPEN.search(rest):
            out.errors.append("tool-call markup (</tool_call> or <function=...>) without an opening <tool_call>")
        return out
    out.content = rest[:first].strip()
    _parse_calls(rest, first, _schemas(tools), out)
    return out


def _strip_end_markers(text: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for marker in END_MARKERS:
            if text.rstrip().endswith(marker):
                text, stripped = text.rstrip()[: -len(marker)], True
    return text


def _parse_calls(rest: str, pos: int, schemas: dict[str, dict], out: ParsedAssistant) -> None:
    k = 0
    while True:  # invariant: rest[pos:] starts with <tool_call>
        end = rest.find(CALL_CLOSE, pos)
        if end < 0:
            out.errors.append(f"tool call {k}: no closing </tool_call> (output truncated?)")
            return
        body = rest[pos + len(CALL_OPEN):end]
        try:
            out.tool_calls.append(_parse_call(body, schemas))
        except ValueError as e:
            out.errors.append(f"tool call {k}: {e}")
        pos = end + len(CALL_CLOSE)
        nxt = rest.find(CALL_OPEN, pos)
        between = rest[pos:nxt if nxt >= 0 else len(rest)]
        if between.strip():
            out.errors.append(f"text after tool call {k} that is not a <tool_call>: {_excerpt(between)}")
        if nxt < 0:
            return
        pos, k = nxt, k + 1


def _parse_call(body: str, schemas: dict[str, dict]) -> ToolCall:
    body = body.strip()
    m = _FN_OPEN.match(body)
    if not m:
        raise ValueError(f"expected <function=NAME> right after <tool_call>, got {_excerpt(body)}")
    name = m[1].strip()
    if not body.endswith(FN_CLOSE):
        raise ValueError(f"function {name!r}: missing </function> before </tool_call>")
    inner, pos, raw = body[m.end():-len(FN_CLOSE)], 0, {}
    while True:
        while pos < len(inner) and inner[pos].isspace():
            pos += 1
        if pos == len(inner):
            break
        p = _PARAM_OPEN.match(inner, pos)
        if not p:
            raise ValueError(f"function {name!r}: expected <parameter=NAME>, got {_excerpt(inner[pos:])}")
        arg = p[1].strip()
        close = inner.find(PARAM_CLOSE, p.end())
        if close < 0:
            raise ValueError(f"function {name!r}: parameter {arg!r} has no </parameter>")
        if arg in raw:
            raise ValueError(f"function {name!r}: parameter {arg!r} given twice")
        value = inner[p.end():close]
        # the template writes "\n" + VALUE + "\n": remove exactly those, keep the value's own whitespace
        value = value.removeprefix("\n")
        raw[arg] = value.removesuffix("\n")
        pos = close + len(PARAM_CLOSE)
    params = schemas.get(name, {})
    return ToolCall(name, {arg: _typed(name, arg, v, params.get(arg)) for arg, v in raw.items()})


def _typed(fn: str, arg: str, value: str, schema: dict | None) -> Any:
    types = (schema or {}).get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if types == ["string"]:
        return value
    try:
        decoded = json.loads(value, parse_constant=_no_constant)
    except ValueError:
        decoded = _NOT_JSON
    if not types:
        return value if decoded is _NOT_JSON else decoded
    if decoded is not _NOT_JSON and any(_JSON_TYPES.get(t, lambda v: False)(decoded) for t in types):
        return decoded
    if "string" in types:
        return value
    raise ValueError(f"function {fn!r}: parameter {arg!r} should be {' or '.join(types)}, got {_excerpt(value)}")


_NOT_JSON = object()


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity stay strings


def _schemas(tools: list[dict] | None) -> dict[str, dict]:
    """{function name: {parameter: its JSON schema}} from OpenAI-style or bare tool schemas."""
    out = {}
    for tool in tools or []:
        fn = tool.get("function", tool)
        props = (fn.get("parameters") or {}).get("properties") or {}
        if fn.get("name"):
            out[fn["name"]] = {k: v for k, v in props.items() if isinstance(v, dict)}
    return out


def _excerpt(text: str, n: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= n else text[:n] + "...")
