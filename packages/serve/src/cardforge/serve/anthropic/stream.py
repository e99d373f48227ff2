"""OpenAI chat-completion chunks -> the Messages streaming event sequence, as a pure state machine:

message_start, ping, then per block content_block_start / *_delta / content_block_stop (thinking_delta,
text_delta, input_json_delta for tool_use), then message_delta (stop_reason, usage) and message_stop.
A block closes when the delta kind changes; tool calls open one tool_use block per OpenAI tool index.
"""

from __future__ import annotations

import json
import uuid

from cardforge.serve.anthropic.translate import message_id, stop_reason, usage

Event = tuple[str, dict]


def sse(event: Event) -> str:
    name, data = event
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class StreamTranslator:
    def __init__(self, model: str, openai_id: str | None = None):
        self.model, self.id = model, message_id(openai_id)
        self.index = -1  # index of the open (or last) content block
        self.kind: str | None = None  # "thinking" | "text" | "tool_use" | None (no block open)
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> our block index
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.saw_tool = False

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
                if self.kind != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

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
        events = self._close()
        reason = "tool_use" if self.saw_tool else (stop_reason(self.finish_reason) or "end_turn")
        u = usage(self.usage)
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": u}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events
