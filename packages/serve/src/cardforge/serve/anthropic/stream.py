"""OpenAI chat-completion chunks -> the Messages streaming event sequence, as a pure state machine:

message_start, ping, then per block content_block_start / *_delta / content_block_stop (thinking_delta,
text_delta, input_json_delta for tool_use), then message_delta (stop_reason, usage) and message_stop.
A block closes when the delta kind changes; tool calls open one tool_use block per OpenAI tool index.

Content that carries our Qwen3 markup (a backend without reasoning / tool parsers) is split as it streams:
a leading `<think>` opens a thinking block up to `</think>`; from the first `<tool_call>` on, the content
is buffered and each complete call (`</tool_call>` seen) is read with `parse_assistant` (THE parser, typed
by the request's tools) and sent as a tool_use block with one input_json_delta; a section where no call
parses is sent as text at the end. Markers split across chunks are held back until they are decided, so
the blocks equal what `from_openai` makes of the same content. Known limit: reasoning WITHOUT its opening
`<think>` ("...</think>answer") cannot be told from text while streaming, so it streams as text; backends
run with a reasoning parser (llama-server's default, `--reasoning-parser qwen3`) never send that.
"""

from __future__ import annotations

import json
import uuid

from cardforge.serve.anthropic.translate import (
    CALL_OPEN, THINK_CLOSE, THINK_OPEN, message_id, parse_content, stop_reason, tool_use_block, usage,
)

Event = tuple[str, dict]


def sse(event: Event) -> str:
    name, data = event
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class StreamTranslator:
    def __init__(self, model: str, openai_id: str | None = None, tools: list[dict] | None = None):
        self.model, self.id, self.tools = model, message_id(openai_id), tools
        self.index = -1  # index of the open (or last) content block
        self.kind: str | None = None  # "thinking" | "text" | "tool_use" | None (no block open)
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> our block index
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.saw_tool = False
        # content markup state: "start" (deciding on a leading <think>), "think", "text", "calls"
        self.mode = "start"
        self.pending = ""  # content not sent yet (a marker may be starting in it)
        self.strip_lead = False  # drop leading whitespace of the next thinking/text (parse_assistant strips it)
        self.markup = False  # the content had think / tool-call markup: its text is stripped like parse_assistant's
        self.gap = ""  # whitespace between the text and the first <tool_call>
        self.calls = ""  # content from the first <tool_call> on
        self.n_calls = 0  # calls parsed from content and sent
        self.parsed_upto = -1  # self.calls[:parsed_upto] has been parsed

    def start(self) -> list[Event]:
        msg = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [("message_start", {"type": "message_start", "message": msg}), ("ping", {"type": "ping"})]

    def _close(self) -> list[Event]:
        if self.kind is None:
            return []
        self.kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _open(self, kind: str, block: dict) -> list[Event]:
        events = self._close()
        self.index += 1
        self.kind = kind
        events.append(("content_block_start", {"type": "content_block_start", "index": self.index,
                                               "content_block": block}))
        return events

    def _delta(self, delta: dict) -> Event:
        return ("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, chunk: dict) -> list[Event]:
        events: list[Event] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self.kind != "thinking":
                    events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]}))
            if delta.get("content"):
                events += self._content(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _emit(self, kind: str, text: str) -> list[Event]:
        if self.strip_lead:
            text = text.lstrip()
        if not text:
            return []
        self.strip_lead = False
        events: list[Event] = []
        if self.kind != kind:
            events += self._open(kind, {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking"
                                 else {"type": "text", "text": ""})
        key = "thinking" if kind == "thinking" else "text"
        events.append(self._delta({"type": f"{key}_delta", key: text}))
        return events

    def _content(self, piece: str) -> list[Event]:
        if self.mode == "calls":
            self.calls += piece
            return self._parsed_calls(final=False)
        self.pending += piece
        events: list[Event] = []
        while True:
            if self.mode == "start":
                lead = self.pending.lstrip()
                if not lead or (THINK_OPEN.startswith(lead) and lead != THINK_OPEN):
                    return events  # maybe the start of <think>: wait
                if lead.startswith(THINK_OPEN):
                    self.mode, self.markup, self.strip_lead = "think", True, True
                    self.pending = lead[len(THINK_OPEN):]
                else:
                    self.mode = "text"
            elif self.mode == "think":
                end = self.pending.find(THINK_CLOSE)
                if end < 0:
                    keep = _held(self.pending, THINK_CLOSE)
                    events += self._emit("thinking", self.pending[:keep])
                    self.pending = self.pending[keep:]
                    return events
                events += self._emit("thinking", self.pending[:end].rstrip())
                events += self._close()
                self.mode, self.strip_lead = "text", True
                self.pending = self.pending[end + len(THINK_CLOSE):]
            elif self.mode == "text":
                at = self.pending.find(CALL_OPEN)
                if at < 0:
                    keep = _held(self.pending, CALL_OPEN)
                    events += self._emit("text", self.pending[:keep])
                    self.pending = self.pending[keep:]
                    return events
                before = self.pending[:at]
                text = before.rstrip()
                self.gap = before[len(text):]
                events += self._emit("text", text)
                self.mode, self.markup, self.calls, self.pending = "calls", True, self.pending[at:], ""
                return events + self._parsed_calls(final=False)

    def _parsed_calls(self, final: bool) -> list[Event]:
        """tool_use blocks for the calls in self.calls that are complete and not sent yet."""
        close = self.calls.rfind("</tool_call>")
        upto = len(self.calls) if final else close + len("</tool_call>")
        if not final and (close < 0 or upto == self.parsed_upto):
            return []
        self.parsed_upto = upto
        parsed = parse_content(self.calls[:upto], self.tools)
        events: list[Event] = []
        for call in parsed.tool_calls[self.n_calls:]:
            block = tool_use_block(call)
            events += self._open("tool_use", {**block, "input": {}})
            events.append(self._delta({"type": "input_json_delta",
                                       "partial_json": json.dumps(block["input"], ensure_ascii=False)}))
            events += self._close()
            self.saw_tool = True
        self.n_calls = len(parsed.tool_calls)
        if final and not self.n_calls and self.calls:  # nothing parsed: the client gets what the model wrote
            events += self._emit("text", self.gap + self.calls.rstrip())
        return events

    def _flush(self) -> list[Event]:
        if self.mode == "calls":
            return self._parsed_calls(final=True)
        rest, self.pending = self.pending, ""
        if self.mode == "think":
            return self._emit("thinking", rest.rstrip())
        if not rest.strip() and self.kind not in (None, "text"):
            return []  # held whitespace after another block (a backend-parsed tool call): no extra text block
        return self._emit("text", rest.rstrip() if self.markup else rest)

    def _tool_delta(self, call: dict) -> list[Event]:
        events: list[Event] = []
        fn = call.get("function") or {}
        idx = call.get("index", len(self.tool_blocks))
        if idx not in self.tool_blocks:
            block = {"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                     "name": fn.get("name", ""), "input": {}}
            events += self._open("tool_use", block)
            self.tool_blocks[idx] = self.index
            self.saw_tool = True
        elif self.tool_blocks[idx] != self.index:
            return events  # a late fragment of an earlier call: its block is closed, nothing valid to emit
        if fn.get("arguments"):
            events.append(self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]}))
        return events

    def finish(self) -> list[Event]:
        events = self._flush()
        events += self._close()
        reason = "tool_use" if self.saw_tool else (stop_reason(self.finish_reason) or "end_turn")
        u = usage(self.usage)
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": u}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events


def _held(text: str, marker: str) -> int:
    """Where the part of `text` to hold back starts: a tail that may begin `marker`, and trailing whitespace
    (parse_assistant strips it before a marker; it is sent once more text follows)."""
    cut = len(text)
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            cut = len(text) - n
            break
    return len(text[:cut].rstrip())
