"""Messages API <-> OpenAI chat completions, as pure functions (unit-tested without a server).

Request: system -> a system message; text/image blocks -> content (parts); assistant thinking ->
`reasoning_content` (llama-server, vLLM and our chat template read it back); tool_use -> tool_calls with
JSON-string arguments; tool_result blocks -> `tool` messages placed *before* the rest of that user turn
(OpenAI wants them right after the assistant's calls). thinking enabled/disabled -> the Qwen3 template's
`chat_template_kwargs.enable_thinking`; absent -> the template's default.
Response: reasoning_content -> a thinking block, content -> a text block, tool_calls -> tool_use blocks.
A backend that returns our Qwen3 markup in `content` (a `<think>` block, `<tool_call><function=...>` XML)
instead of structured fields (no reasoning / tool parser, or a parser that missed it) is read with
`cardforge.core.chat.parse_assistant`, THE parser of the chat contract, so the tool_use blocks are exactly
the calls the data and eval stages would see (typed by the request's tool schemas).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from cardforge.core.chat import ParsedAssistant, ToolCall, parse_assistant

from cardforge.serve.anthropic.protocol import (
    ImageBlock, MessagesRequest, RedactedThinkingBlock, TextBlock, ThinkingBlock, ToolResultBlock, ToolUseBlock,
)

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}


class TranslationError(ValueError):
    """The request is valid JSON but cannot be expressed for the backend (HTTP 400)."""


def error_body(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def stop_reason(finish_reason: str | None) -> str | None:
    return STOP_REASONS.get(finish_reason, "end_turn") if finish_reason else None


def usage(openai_usage: dict | None) -> dict:
    """Anthropic counts cache reads apart from input_tokens; OpenAI's prompt_tokens includes them."""
    u = openai_usage or {}
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": int(u.get("prompt_tokens", 0)) - cached, "output_tokens": int(u.get("completion_tokens", 0)),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _image_part(block: ImageBlock) -> dict:
    src = block.source
    url = src.url if src.type == "url" else f"data:{src.media_type};base64,{src.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _content(blocks: list) -> str | list[dict]:
    """Plain text stays a string (every chat template renders it); images need OpenAI content parts."""
    if all(isinstance(b, TextBlock) for b in blocks):
        return "\n".join(b.text for b in blocks)
    return [{"type": "text", "text": b.text} if isinstance(b, TextBlock) else _image_part(b) for b in blocks]


def _tool_result_text(block: ToolResultBlock) -> str | list[dict]:
    if block.content is None:
        text: str | list[dict] = ""
    elif isinstance(block.content, str):
        text = block.content
    else:
        text = _content(block.content)
    if block.is_error and isinstance(text, str):
        text = f"[tool error] {text}"  # OpenAI tool messages have no error flag
    return text


def _user_messages(content) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out, rest = [], []
    for b in content:
        if isinstance(b, ToolResultBlock):
            out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": _tool_result_text(b)})
        elif isinstance(b, (TextBlock, ImageBlock)):
            rest.append(b)
        else:
            raise TranslationError(f"a user message cannot carry a {b.type} block")
    if rest:
        out.append({"role": "user", "content": _content(rest)})
    return out


def _assistant_message(content) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts, thoughts, calls = [], [], []
    for b in content:
        if isinstance(b, TextBlock):
            texts.append(b.text)
        elif isinstance(b, ThinkingBlock):
            thoughts.append(b.thinking)
        elif isinstance(b, RedactedThinkingBlock):
            continue  # encrypted by another provider: nothing a local model can read
        elif isinstance(b, ToolUseBlock):
            calls.append({"id": b.id, "type": "function",
                          "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}})
        else:
            raise TranslationError(f"an assistant message cannot carry a {b.type} block")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thoughts:
        msg["reasoning_content"] = "\n".join(thoughts)
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_choice(choice) -> tuple[Any, bool | None]:
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name:
            raise TranslationError("tool_choice.name is required when tool_choice.type is 'tool'")
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def to_openai(req: MessagesRequest, model: str | None = None) -> dict:
    """The OpenAI chat-completions body for a Messages request (`model` overrides the client's name)."""
    messages: list[dict] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        messages.append({"role": "system", "content": system})
    for m in req.messages:
        messages.extend(_user_messages(m.content) if m.role == "user" else [_assistant_message(m.content)])
    body: dict[str, Any] = {"model": model or req.model, "messages": messages, "max_tokens": req.max_tokens}
    for key, val in (("temperature", req.temperature), ("top_p", req.top_p), ("top_k", req.top_k)):
        if val is not None:
            body[key] = val
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    if req.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description or "", "parameters": t.input_schema}} for t in req.tools]
    if req.tool_choice:
        body["tool_choice"], parallel = _tool_choice(req.tool_choice)
        if parallel is not None:
            body["parallel_tool_calls"] = parallel
    if req.thinking and req.thinking.type in ("enabled", "disabled"):
        body["chat_template_kwargs"] = {"enable_thinking": req.thinking.type == "enabled"}
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # usage arrives in the last chunk
    return body


def parse_arguments(arguments: str | dict | None) -> dict:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return {"_raw_arguments": arguments}  # keep what the model wrote rather than dropping the call
    return value if isinstance(value, dict) else {"_value": value}


def message_id(openai_id: str | None = None) -> str:
    return f"msg_{openai_id or uuid.uuid4().hex}"


THINK_OPEN, THINK_CLOSE, CALL_OPEN = "<think>", "</think>", "<tool_call>"


def has_markup(text: str | None) -> bool:
    """True when assistant content carries think / tool-call markup a backend left unparsed."""
    return bool(text) and (CALL_OPEN in text or THINK_CLOSE in text or text.lstrip().startswith(THINK_OPEN))


def tool_use_block(call: ToolCall) -> dict:
    return {"type": "tool_use", "id": call.id or f"toolu_{uuid.uuid4().hex[:24]}", "name": call.name,
            "input": call.arguments}


def parse_content(text: str, tools: list[dict] | None = None) -> ParsedAssistant:
    """parse_assistant on backend content; when no call survives a malformed tool-call section, that section
    stays in the text (the client sees what the model wrote instead of losing it)."""
    parsed = parse_assistant(text, tools)
    if parsed.errors and not parsed.tool_calls and CALL_OPEN in text:
        rest = text.split(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text
        parsed.content = rest.strip()
    return parsed


def from_openai(resp: dict, model: str, tools: list[dict] | None = None) -> dict:
    """An Anthropic `message` object from a non-streaming chat completion (`tools`: the OpenAI request's
    tools, which type the arguments of calls parsed from content)."""
    choice = (resp.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict] = []
    reasoning, text, parsed_calls = msg.get("reasoning_content"), msg.get("content"), []
    if not msg.get("tool_calls") and isinstance(text, str) and has_markup(text):
        parsed = parse_content(text, tools)
        reasoning = reasoning or parsed.reasoning
        text, parsed_calls = parsed.content, [tool_use_block(c) for c in parsed.tool_calls]
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if text:
        content.append({"type": "text", "text": text})
    content += parsed_calls
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": fn.get("name", ""), "input": parse_arguments(fn.get("arguments"))})
    reason = stop_reason(choice.get("finish_reason")) or "end_turn"
    if any(b["type"] == "tool_use" for b in content):
        reason = "tool_use"  # some backends say "stop" after a parsed call
    return {"id": message_id(resp.get("id")), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": None, "usage": usage(resp.get("usage"))}
