"""The guard's pure functions: a validated Messages request -> the body the engine's native /v1/messages
gets, and the engine's answer -> what the Messages API would answer. Only the measured gaps of the native
endpoint are touched (docs/serving.md, "Anthropic Messages API: the measured gap"):

request  `thinking: disabled` -> `chat_template_kwargs.enable_thinking=false` (native ignores `disabled`;
         `enabled` also sets it true, as the Qwen3 templates read it);
         `tool_choice: none` -> no tools sent (native maps `none` to auto: the model could still call one);
         `tool_choice: {type: tool, name}` -> only that tool, required (native maps it to "any tool");
         `is_error: true` -> the result's content starts with "[tool error] " (native drops the flag);
         a plain-text `document` block -> a text block (native drops documents silently);
         server tools (`type: web_search_...`, run on Anthropic's side) -> not forwarded (no engine runs
         them; native would offer them to the model as ordinary functions without a schema);
answer   a stop sequence that ended the turn -> `stop_reason: stop_sequence` (native says end_turn);
         an assistant prefill repeated at the start of the answer -> cut (Anthropic continues after it);
errors   every error body -> Anthropic's `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import copy
from typing import Any

from cardforge.serve.anthropic.protocol import CountTokensRequest, MessagesRequest, error_body

TOOL_ERROR = "[tool error] "

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               501: "invalid_request_error", 502: "api_error", 503: "overloaded_error", 504: "api_error",
               529: "overloaded_error"}


def error_kind(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def engine_error(status: int, body: Any) -> tuple[int, dict]:
    """An engine's error answer (llama-server: {"error": {"code", "message", "type"}}) in Anthropic's shape;
    the status stays, except 501 (not supported: a 400 for the client)."""
    message = body
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message", err) if isinstance(err, dict) else err
    status = 400 if status == 501 else status
    return status, error_body(error_kind(status), f"engine returned {status}: {str(message)[:1000]}")


def _mark_error(block: dict) -> dict:
    content = block.get("content")
    if isinstance(content, str) or content is None:
        block["content"] = TOOL_ERROR + (content or "")
    else:  # blocks (text, images): a leading text block carries the flag even when nothing else is text
        block["content"] = [{"type": "text", "text": TOOL_ERROR}, *content]
    return block


def _doc_text(block: dict) -> dict:
    src = block.get("source") or {}
    if block.get("type") == "document" and src.get("type") == "text" and isinstance(src.get("data"), str):
        title = block.get("title")
        return {"type": "text", "text": f"{title}\n\n{src['data']}" if title else src["data"]}
    return block


def _blocks(content: list) -> list:
    out = []
    for b in content:
        b = _doc_text(b)
        if b.get("type") == "tool_result" and isinstance(b.get("content"), list):
            b = {**b, "content": [_doc_text(c) for c in b["content"]]}
        if b.get("type") == "tool_result" and b.get("is_error"):
            b = _mark_error(b)
        out.append(b)
    return out


def native_body(payload: dict, req: MessagesRequest | CountTokensRequest, model: str | None = None) -> dict:
    """The body for the engine's /v1/messages (or count_tokens): the client's JSON, unknown fields kept,
    with the gap rewrites of the module docstring."""
    body = copy.deepcopy(payload)
    if model:
        body["model"] = model
    thinking = req.thinking.type if req.thinking else None
    if thinking in ("enabled", "disabled"):
        kwargs = dict(body.get("chat_template_kwargs") or {})
        kwargs["enable_thinking"] = thinking == "enabled"
        body["chat_template_kwargs"] = kwargs
    if any(t.server for t in req.tools or []):
        body["tools"] = [t for t in body["tools"] if t.get("type") in (None, "custom")]
        if not body["tools"]:
            body.pop("tools")
            body.pop("tool_choice", None)
    tc = req.tool_choice
    if tc and tc.type == "none":
        body.pop("tools", None)
        body.pop("tool_choice", None)
    elif tc and tc.type == "tool":
        body["tools"] = [t for t in body.get("tools") or [] if t.get("name") == tc.name]
        body["tool_choice"] = {"type": "any"}
    for m in body.get("messages") or []:
        if isinstance(m.get("content"), list):
            m["content"] = _blocks(m["content"])
    return body


def prefill(req: MessagesRequest) -> str:
    """The assistant prefill (the text of a final assistant turn), '' when the last turn is the user's."""
    last = req.messages[-1]
    if last.role != "assistant":
        return ""
    if isinstance(last.content, str):
        return last.content
    texts = [b.text for b in last.content if getattr(b, "type", None) == "text"]
    return texts[-1] if texts else ""


def fix_stop(stop_reason: str | None, stop_sequence: str | None) -> str | None:
    return "stop_sequence" if stop_sequence else stop_reason


def fix_message(msg: dict, req: MessagesRequest) -> dict:
    """A non-streaming answer as the Messages API gives it (see the module docstring)."""
    msg = dict(msg)
    msg["stop_reason"] = fix_stop(msg.get("stop_reason"), msg.get("stop_sequence"))
    pre = prefill(req)
    if pre:
        for b in msg.get("content") or []:
            if b.get("type") == "text":
                if b["text"].startswith(pre):
                    b["text"] = b["text"][len(pre):]
                break
    return msg
