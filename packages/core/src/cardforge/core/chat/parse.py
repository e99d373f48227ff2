"""THE parser of assistant output in the Qwen3 style: <think> reasoning + qwen3_xml tool calls.

The data stage (teacher output), the loss-mask round trip (`encode` parses every assistant span it trains on
and refuses the sample when the parse differs), and the serve/eval side all read assistant text with
`parse_assistant`, so a format drift shows up everywhere at once.

    <think>\\nREASONING\\n</think>\\n\\nCONTENT\\n\\n<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE
    \\n</parameter>\\n</function>\\n</tool_call>\\n<tool_call>...</tool_call>

Rules (why: a guess here would silently train on, or score, something the model did not say):
* The opening <think> may be absent: the generation prompt of the Qwen3.5 template (and ours) already holds
  it, so a server returns "REASONING\\n</think>\\n\\nCONTENT". Text before the FIRST </think> is reasoning;
  after it, <think> and </think> are plain text (a parameter value may hold them).
* No </think>: with `think_open=True` (the prompt opened the block) or a leading <think>, the whole text is
  reasoning and an error says the output ended inside it; otherwise the text is plain content.
* Tool calls start at the first <tool_call>. Inside a call the structure is walked, not searched: a
  parameter's value ends at the first </parameter> that is STRUCTURAL, i.e. followed (after whitespace) by
  </function>, </tool_call> or <parameter=NAME> with a NAME the format can carry. So a value may hold
  </parameter>, </function>, </tool_call>, <think>, ... as text, except "</parameter>" + "<parameter=NAME>":
  that is read as the next argument, and a NAME the tool's schema does not declare, or one given twice, is
  an error (the call is dropped), never absorbed into the value and never a silent extra argument. `encode`
  refuses training samples whose values hold tool-call markup, so the student is never taught such a value
  (see docs/data.md: the chat contract).
* A VALUE is the text between <parameter=ARG> and its </parameter> less ONE newline each side (the template
  adds exactly those). Typing (`typed_value`): the value stays the raw string unless EVERY type the schema
  allows for it is non-string (type / type lists / anyOf / oneOf / enum / const); then it must decode (JSON,
  or the Python spellings True/False/None that the Qwen3.5 template's `| string` writes) to one of those
  types (and to an enum/const member), else the call is an error. No schema for the parameter: a string.
* Malformed markup (no </tool_call>, no <function=...>, text between or after calls, a duplicate, unknown
  or unclosed parameter, a value that does not fit its schema type, a name with <>{}"' or whitespace) is
  reported in `errors`; that call is dropped, never repaired. Calls that parse are kept, so a caller can
  choose to use them or not.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from cardforge.core.chat.schema import Message, ToolCall

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
FN_PREFIX, FN_CLOSE = "<function=", "</function>"
PARAM_PREFIX, PARAM_CLOSE = "<parameter=", "</parameter>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
# end-of-turn markers a server may leave at the end when it returns special tokens
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
_NAME = re.compile(r"[^<>{}\"'\s=]+")
_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}
_PY_LITERALS = {"True": True, "False": False, "None": None}  # what jinja's `| string` makes of them


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


def valid_name(name: str) -> bool:
    """A function or parameter name the XML format can carry: no <>{}"'=, no whitespace, not empty."""
    return bool(_NAME.fullmatch(name))


def parse_assistant(text: str, tools: list[dict] | None = None, *, think_open: bool | None = False) -> ParsedAssistant:
    """Split one assistant output into reasoning, content and tool calls; problems go to `.errors`.
    think_open=None: the text has no reasoning block at all (an earlier turn the template rendered without it)."""
    out = ParsedAssistant()
    text = _strip_end_markers(text)
    if think_open is None:  # a turn rendered without a reasoning block (parse_conversation): all of it is content
        _content_and_calls(text, tools, out)
        return out
    lead = text.lstrip()
    opened = lead.startswith(THINK_OPEN)
    if opened:
        text = lead[len(THINK_OPEN):]
    close = text.find(THINK_CLOSE)
    if close >= 0:
        out.reasoning, rest = text[:close].strip(), text[close + len(THINK_CLOSE):]
    elif opened or think_open:
        out.reasoning, rest = text.strip(), ""
        out.errors.append("missing </think>: the output ended inside the reasoning (truncated?)")
    else:
        rest = text
    _content_and_calls(rest, tools, out)
    return out


def _content_and_calls(rest: str, tools: list[dict] | None, out: ParsedAssistant) -> None:
    first = rest.find(CALL_OPEN)
    if first < 0:
        out.content = rest.strip()
        if CALL_CLOSE in rest or FN_PREFIX in rest:
            out.errors.append("tool-call markup (</tool_call> or <function=...>) without an opening <tool_call>")
        return
    out.content = rest[:first].strip()
    _parse_calls(rest, first, _schemas(tools), out)


def _strip_end_markers(text: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for marker in END_MARKERS:
            if text.rstrip().endswith(marker):
                text, stripped = text.rstrip()[: -len(marker)], True
    return text


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


class _CallError(ValueError):
    def __init__(self, message: str, resume: int):
        self.resume = resume  # where to look for the next <tool_call>
        super().__init__(message)


def _parse_calls(rest: str, pos: int, schemas: dict[str, dict | None], out: ParsedAssistant) -> None:
    k = 0
    while True:  # invariant: rest[pos:] starts with <tool_call>
        try:
            call, pos = _parse_call(rest, pos + len(CALL_OPEN), schemas)
            out.tool_calls.append(call)
        except _CallError as e:
            out.errors.append(f"tool call {k}: {e}")
            if e.resume < 0:
                return
            pos = e.resume
        nxt = rest.find(CALL_OPEN, pos)
        between = rest[pos:nxt if nxt >= 0 else len(rest)]
        if between.strip():
            out.errors.append(f"text after tool call {k} that is not a <tool_call>: {_excerpt(between)}")
        if nxt < 0:
            return
        pos, k = nxt, k + 1


def _resume_after_close(text: str, pos: int) -> int:
    end = text.find(CALL_CLOSE, pos)
    return end + len(CALL_CLOSE) if end >= 0 else -1


def _parse_call(text: str, pos: int, schemas: dict[str, dict | None]) -> tuple[ToolCall, int]:
    """One call whose body starts at `pos` (just after <tool_call>); returns it and the index after its
    </tool_call>."""
    start = pos
    pos = _skip_ws(text, pos)
    if not text.startswith(FN_PREFIX, pos):
        if CALL_CLOSE not in text[start:]:
            raise _CallError("no closing </tool_call> (output truncated?)", -1)
        raise _CallError(f"expected <function=NAME> right after <tool_call>, got {_excerpt(text[pos:])}",
                         _resume_after_close(text, start))
    gt = text.find(">", pos)
    name = text[pos + len(FN_PREFIX):gt] if gt >= 0 else ""
    if gt < 0 or not valid_name(name):
        raise _CallError(f"invalid function name {_excerpt(text[pos + len(FN_PREFIX):])}",
                         _resume_after_close(text, start))
    params = schemas.get(name)  # None: no closed schema, any parameter name (typed where declared: not kept)
    pos, raw = gt + 1, {}
    while True:
        pos = _skip_ws(text, pos)
        if text.startswith(FN_CLOSE, pos):
            pos = _skip_ws(text, pos + len(FN_CLOSE))
            if not text.startswith(CALL_CLOSE, pos):
                if CALL_CLOSE not in text[pos:]:
                    raise _CallError("no closing </tool_call> (output truncated?)", -1)
                raise _CallError(f"function {name!r}: text between </function> and </tool_call>: "
                                 f"{_excerpt(text[pos:])}", _resume_after_close(text, pos))
            pos += len(CALL_CLOSE)
            break
        if not text.startswith(PARAM_PREFIX, pos):
            if pos >= len(text):
                raise _CallError(f"function {name!r}: no </function> (output truncated?)", -1)
            if text.startswith(CALL_CLOSE, pos):
                raise _CallError(f"function {name!r}: missing </function> before </tool_call>",
                                 pos + len(CALL_CLOSE))
            raise _CallError(f"function {name!r}: expected <parameter=NAME>, got {_excerpt(text[pos:])}",
                             _resume_after_close(text, pos))
        gt = text.find(">", pos)
        arg = text[pos + len(PARAM_PREFIX):gt] if gt >= 0 else ""
        if gt < 0 or not valid_name(arg):
            raise _CallError(f"function {name!r}: invalid parameter name {_excerpt(text[pos + len(PARAM_PREFIX):])}",
                             _resume_after_close(text, pos))
        if arg in raw:
            raise _CallError(f"function {name!r}: parameter {arg!r} given twice", _resume_after_close(text, pos))
        if params is not None and arg not in params:
            raise _CallError(f"function {name!r}: parameter {arg!r} is not in its schema (known: "
                             f"{', '.join(sorted(params)) or 'none'})", _resume_after_close(text, pos))
        close = _structural_param_close(text, gt + 1)
        if close < 0:
            raise _CallError(f"function {name!r}: parameter {arg!r} has no </parameter>",
                             _resume_after_close(text, pos))
        # the template writes "\n" + VALUE + "\n": remove exactly those, keep the value's own whitespace
        raw[arg] = text[gt + 1:close].removeprefix("\n").removesuffix("\n")
        pos = close + len(PARAM_CLOSE)
    try:
        args = {arg: typed_value(v, (params or {}).get(arg), f"function {name!r}: parameter {arg!r}")
                for arg, v in raw.items()}
    except ValueError as e:
        raise _CallError(str(e), pos) from None
    return ToolCall(name, args), pos


def _structural_param_close(text: str, pos: int) -> int:
    """Index of the </parameter> that ends the value starting at `pos`, or -1."""
    while True:
        close = text.find(PARAM_CLOSE, pos)
        if close < 0:
            return -1
        after = _skip_ws(text, close + len(PARAM_CLOSE))
        if text.startswith(FN_CLOSE, after) or text.startswith(CALL_CLOSE, after):
            return close  # (</tool_call> without </function>: reported as such by the caller)
        if text.startswith(PARAM_PREFIX, after):
            gt = text.find(">", after)
            nxt = text[after + len(PARAM_PREFIX):gt] if gt >= 0 else ""
            if valid_name(nxt):
                return close  # an unknown or repeated name is reported by the caller, never absorbed into the value
        pos = close + len(PARAM_CLOSE)


def allowed_types(schema: Any) -> set[str] | None:
    """The JSON types a value of this schema may take; None = unknown (no schema, a $ref, `{}`): anything,
    strings included. Reads type (string or list), anyOf/oneOf (union), allOf (intersection), enum, const."""
    if not isinstance(schema, dict):
        return None
    sets: list[set[str]] = []
    t = schema.get("type")
    if isinstance(t, str):
        sets.append({t})
    elif isinstance(t, list) and t and all(isinstance(x, str) for x in t):
        sets.append(set(t))
    elif t is not None:
        return None
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            union: set[str] = set()
            for branch in schema[key]:
                b = allowed_types(branch)
                if b is None:
                    return None
                union |= b
            sets.append(union)
    if isinstance(schema.get("allOf"), list):
        for branch in schema["allOf"]:
            b = allowed_types(branch)
            if b is not None:
                sets.append(b)
    if "const" in schema:
        sets.append({_json_type(schema["const"])})
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        sets.append({_json_type(v) for v in schema["enum"]})
    if not sets:
        return None
    for s in sets:  # an integer is a number
        if "number" in s:
            s.add("integer")
    return set.intersection(*sets)


def _json_type(v: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _JSON_TYPES[name](v):
            return name
    return "unknown"


def typed_value(value: str, schema: Any, where: str = "value") -> Any:
    """The Python value of one parameter's text under its schema (see the module docstring)."""
    types = allowed_types(schema)
    if types is None or "string" in types:
        return value  # a string is allowed: never guess that "42" or "null" meant something else
    if not types:
        raise ValueError(f"{where}: its schema allows no value")
    text = value.strip()
    try:
        decoded = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        decoded = _PY_LITERALS.get(text, _NOT_JSON)
    names = " or ".join(sorted(types))
    if decoded is _NOT_JSON or not any(_JSON_TYPES.get(t, lambda v: False)(decoded) for t in types):
        raise ValueError(f"{where} should be {names}, got {_excerpt(value)}")
    members = _members(schema)
    if members is not None and not any(same_value(decoded, m) for m in members):
        raise ValueError(f"{where} should be one of {_excerpt(json.dumps(members))}, got {_excerpt(value)}")
    return decoded


def _members(schema: dict) -> list | None:
    if "const" in schema:
        return [schema["const"]]
    if isinstance(schema.get("enum"), list):
        return schema["enum"]
    return None


def same_value(a: Any, b: Any) -> bool:
    """Equality that tells types apart (True != 1, 1 != 1.0 is NOT told apart: JSON has one number type)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


_NOT_JSON = object()


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity stay strings


def _schemas(tools: list[dict] | None) -> dict[str, dict | None]:
    """{function name: {parameter: its JSON schema}} from OpenAI-style or bare tool schemas; None for a tool
    that does not close its parameter names (no `properties`, or `additionalProperties`): any name goes."""
    out: dict[str, dict | None] = {}
    for tool in tools or []:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            continue
        params = fn.get("parameters", fn.get("input_schema"))  # OpenAI / Anthropic tool shapes
        params = params if isinstance(params, dict) else {}
        props = params.get("properties")
        if not isinstance(props, dict) or params.get("additionalProperties") not in (None, False):
            out[fn["name"]] = None
        else:
            out[fn["name"]] = {k: v for k, v in props.items() if isinstance(v, dict)}
    return out


def parse_conversation(text: str, tools: list[dict] | None = None) -> list[Message]:
    """The messages of a conversation rendered by the Qwen3.5 template (or ours): system (the tool preamble
    removed), user, assistant (reasoning when the turn shows it), tool (several in one user turn). Call ids
    and tool names are not rendered, so they are not recovered. Raises ValueError on text it cannot split."""
    out: list[Message] = []
    chunks = text.split("<|im_start|>")
    if chunks[0].strip():
        raise ValueError(f"text before the first <|im_start|>: {_excerpt(chunks[0])}")
    for chunk in chunks[1:]:
        body, sep, tail = chunk.partition("<|im_end|>")
        if sep and tail not in ("\n", ""):
            raise ValueError(f"text after <|im_end|>: {_excerpt(tail)}")
        role, nl, body = body.partition("\n")
        if role == "user" and body.startswith(RESPONSE_OPEN + "\n"):
            out += _tool_responses("\n" + body)
        elif role == "system":
            if body.startswith("# Tools\n"):
                end = body.find("</IMPORTANT>")
                marker = "</IMPORTANT>" if end >= 0 else "</tools>"
                end = end if end >= 0 else body.find("</tools>")
                body = body[end + len(marker):] if end >= 0 else ""
            out.append(Message("system", body.strip()))
        elif role == "user":
            out.append(Message("user", body.strip()))
        elif role == "assistant":
            think = body.startswith(THINK_OPEN + "\n")  # the template opens a shown reasoning block so
            p = parse_assistant(body, tools, think_open=False if think else None)
            if p.errors:
                raise ValueError(f"assistant turn {len(out)}: {'; '.join(p.errors)}")
            out.append(Message("assistant", p.content, p.reasoning if think else "", p.tool_calls))
        else:
            raise ValueError(f"unknown role line {_excerpt(role)}")
    return out


def _tool_responses(body: str) -> list[Message]:
    out, pos = [], 0
    while pos < len(body):
        if not body.startswith("\n" + RESPONSE_OPEN + "\n", pos):
            raise ValueError(f"expected <tool_response> in a tool turn, got {_excerpt(body[pos:])}")
        start = pos + len(RESPONSE_OPEN) + 2
        end = body.find("\n" + RESPONSE_CLOSE, start)
        if end < 0:
            raise ValueError("a <tool_response> without </tool_response>")
        out.append(Message("tool", body[start:end].strip()))
        pos = end + len(RESPONSE_CLOSE) + 1
    return out


def nfc(value: Any) -> Any:
    """Unicode NFC of every string in a JSON-like value (keys too): the tokenizer normalizes to NFC, so the
    chat contract's canonical text is NFC (decode(encode(text)) == text only for NFC text)."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {nfc(k): nfc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nfc(v) for v in value]
    return value


def _excerpt(text: str, n: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= n else text[:n] + "...")
