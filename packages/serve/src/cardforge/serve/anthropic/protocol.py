"""What a Messages API request must be, as Anthropic checks it (pydantic models + `check_conversation`).

The engine's native endpoint (llama-server's /v1/messages) is permissive: it accepts `max_tokens: "5"`,
`temperature: 1.5`, a tool_result without its tool_use, or a conversation that starts with the assistant,
and answers something. Anthropic answers 400 invalid_request_error; so do we, before the engine sees it.

Unknown fields (cache_control, citations, metadata, context_management, ...) are accepted and forwarded:
Claude Code sends them routinely.

The answer side: every error is `ApiError` (status + Anthropic's body `{"type": "error", "error": {"type",
"message"}}`); `parse_request` turns a request body into (the client's JSON, the validated model) or a 400.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

from pydantic import (
    BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError, model_validator,
)

Number = Union[StrictInt, StrictFloat]  # JSON numbers only: "0.5" and true are refused, as Anthropic does


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextBlock(_Block):
    type: Literal["text"]
    text: StrictStr


class ImageSource(_Block):
    type: Literal["base64", "url"]
    media_type: Optional[str] = None
    data: Optional[str] = None
    url: Optional[str] = None


class ImageBlock(_Block):
    type: Literal["image"]
    source: ImageSource


class DocumentBlock(_Block):
    type: Literal["document"]
    source: dict[str, Any]


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: StrictStr = Field(min_length=1)
    name: StrictStr = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: StrictStr = Field(min_length=1)
    content: Union[StrictStr, list[Annotated[Union[TextBlock, ImageBlock, DocumentBlock],
                                             Field(discriminator="type")]], None] = None
    is_error: Optional[StrictBool] = None


class ThinkingBlock(_Block):
    type: Literal["thinking"]
    thinking: StrictStr
    signature: Optional[str] = None


class RedactedThinkingBlock(_Block):
    type: Literal["redacted_thinking"]
    data: StrictStr


ContentBlock = Annotated[
    Union[TextBlock, ImageBlock, DocumentBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock],
    Field(discriminator="type"),
]


class Message(_Block):
    role: Literal["user", "assistant"]
    content: Union[StrictStr, list[ContentBlock]]


class Tool(_Block):
    name: StrictStr = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: Optional[StrictStr] = None
    input_schema: Optional[dict[str, Any]] = None  # required for custom tools (checked below)
    type: Optional[StrictStr] = None  # None/"custom": ours; else a server tool (web_search_...): not forwarded

    @property
    def server(self) -> bool:
        return self.type not in (None, "custom")

    @model_validator(mode="after")
    def _schema(self) -> "Tool":
        if not self.server and self.input_schema is None:
            raise ValueError("input_schema: Field required")
        return self


class ToolChoice(_Block):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[StrictStr] = None
    disable_parallel_tool_use: Optional[StrictBool] = None

    @model_validator(mode="after")
    def _name(self) -> "ToolChoice":
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice.name is required when tool_choice.type is 'tool'")
        return self


class ThinkingConfig(_Block):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Optional[StrictInt] = Field(default=None, ge=1024)

    @model_validator(mode="after")
    def _budget(self) -> "ThinkingConfig":
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking.budget_tokens is required when thinking.type is 'enabled'")
        return self


class CountTokensRequest(_Block):
    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: Union[StrictStr, list[TextBlock], None] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[ThinkingConfig] = None

    @model_validator(mode="after")
    def _conversation(self):
        check_conversation(self)
        return self


class MessagesRequest(CountTokensRequest):
    max_tokens: StrictInt = Field(ge=1)
    stop_sequences: Optional[list[StrictStr]] = None
    stream: StrictBool = False
    temperature: Optional[Number] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[Number] = Field(default=None, ge=0.0, le=1.0)
    top_k: Optional[StrictInt] = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _thinking_budget(self) -> "MessagesRequest":
        t = self.thinking
        if t and t.type == "enabled" and t.budget_tokens is not None and t.budget_tokens >= self.max_tokens:
            raise ValueError("thinking.budget_tokens: must be less than max_tokens")
        return self


def _blocks(m: Message) -> list:
    return [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else list(m.content)


def check_conversation(req: CountTokensRequest) -> None:
    """The rules Anthropic enforces on `messages` (ValueError with the message index, as its errors do):
    the first turn is the user's; tool_use only in assistant turns and tool_result only in user turns; every
    tool_use is answered by a tool_result in the very next message, every tool_result answers a tool_use of
    the message just before; tool_use ids are unique; text blocks are non-empty (the final assistant turn,
    a prefill, may not end in whitespace); tool_choice names a declared tool."""
    msgs = req.messages
    if msgs[0].role != "user":
        raise ValueError("messages.0.role: the first message must use the 'user' role")
    seen: set[str] = set()
    for i, m in enumerate(msgs):
        blocks = _blocks(m)
        last = i == len(msgs) - 1
        for j, b in enumerate(blocks):
            if isinstance(b, TextBlock) and not b.text and not (last and m.role == "assistant"):
                raise ValueError(f"messages.{i}.content.{j}.text: text content blocks must be non-empty")
            if isinstance(b, ToolUseBlock) and m.role != "assistant":
                raise ValueError(f"messages.{i}.content.{j}: tool_use blocks can only be in assistant messages")
            if isinstance(b, ToolResultBlock) and m.role != "user":
                raise ValueError(f"messages.{i}.content.{j}: tool_result blocks can only be in user messages")
            if isinstance(b, (ThinkingBlock, RedactedThinkingBlock)) and m.role != "assistant":
                raise ValueError(f"messages.{i}.content.{j}: {b.type} blocks can only be in assistant messages")
            if isinstance(b, ToolUseBlock):
                if b.id in seen:
                    raise ValueError(f"messages.{i}.content.{j}: tool_use ids must be unique, {b.id!r} repeats")
                seen.add(b.id)
        if last and m.role == "assistant" and isinstance(m.content, str) and m.content != m.content.rstrip():
            raise ValueError(f"messages.{i}: final assistant content cannot end with trailing whitespace")
        if last and m.role == "assistant" and blocks and isinstance(blocks[-1], TextBlock) \
                and blocks[-1].text != blocks[-1].text.rstrip():
            raise ValueError(f"messages.{i}: final assistant content cannot end with trailing whitespace")
        uses = [b.id for b in blocks if isinstance(b, ToolUseBlock)]
        results = [b.tool_use_id for b in blocks if isinstance(b, ToolResultBlock)]
        prev_uses = [b.id for b in _blocks(msgs[i - 1]) if isinstance(b, ToolUseBlock)] if i else []
        stray = [r for r in results if r not in prev_uses]
        if stray:
            raise ValueError(f"messages.{i}.content: unexpected tool_use_id found in tool_result blocks: "
                             f"{', '.join(stray)}. Each tool_result block must have a corresponding tool_use "
                             "block in the previous message.")
        if uses:
            nxt = [b.tool_use_id for b in _blocks(msgs[i + 1]) if isinstance(b, ToolResultBlock)] \
                if i + 1 < len(msgs) else []
            missing = [u for u in uses if u not in nxt]
            if missing:
                raise ValueError(f"messages.{i}: tool_use ids were found without tool_result blocks immediately "
                                 f"after: {', '.join(missing)}. Each tool_use block must have a corresponding "
                                 "tool_result block in the next message.")
    tc = req.tool_choice
    names = [t.name for t in req.tools or [] if not t.server]
    if tc and tc.type in ("any", "tool") and not names:
        raise ValueError(f"tool_choice: type '{tc.type}' needs tools")
    if tc and tc.type == "tool" and tc.name not in names:
        raise ValueError(f"tool_choice.name: tool {tc.name!r} is not in tools ({', '.join(names)})")
    if len({t.name for t in req.tools or []}) != len(req.tools or []):
        raise ValueError("tools: tool names must be unique")


# --- the answer side: errors ------------------------------------------------------------------------------

def error_body(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


class ApiError(Exception):
    """An error answer: HTTP `status` and Anthropic's error `body` (error_body)."""

    def __init__(self, status: int, body: dict):
        super().__init__(body["error"]["message"])
        self.status, self.body = status, body

    @classmethod
    def of(cls, status: int, kind: str, message: str) -> "ApiError":
        return cls(status, error_body(kind, message))


def validation_message(e: ValidationError) -> str:
    """The first three pydantic errors as one line, `loc: message` (pydantic's union/validator noise cut)."""
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "union[")))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


RequestT = TypeVar("RequestT", CountTokensRequest, MessagesRequest)


MAX_JSON_DEPTH = 100  # nesting of the request's JSON; deeper (a few KB of `[[[[...`) overflowed the Python stack


def json_depth(obj: Any) -> int:
    """How deeply `obj` (parsed JSON) nests: 0 for a scalar, 1 for a flat list/object; iterative (no recursion)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        elif not isinstance(o, list):
            continue
        depth = max(depth, d)
        stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return depth


def parse_request(raw: bytes, schema: type[RequestT]) -> tuple[dict, RequestT]:
    """(the client's JSON object, kept whole for forwarding; the validated request), or ApiError 400
    invalid_request_error (a body nested deeper than MAX_JSON_DEPTH included: it would overflow the stack of
    json.loads, pydantic or the forwarding deepcopy, a 500 instead of a 400)."""
    try:
        payload = json.loads(raw)
    except ValueError as e:
        raise ApiError.of(400, "invalid_request_error", f"request body is not valid JSON: {e}") from e
    except RecursionError:
        raise ApiError.of(400, "invalid_request_error",
                          f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(payload, dict):
        raise ApiError.of(400, "invalid_request_error", "request body must be a JSON object")
    if json_depth(payload) > MAX_JSON_DEPTH:
        raise ApiError.of(400, "invalid_request_error", f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return payload, schema.model_validate(payload)
    except ValidationError as e:
        raise ApiError.of(400, "invalid_request_error", validation_message(e)) from e
