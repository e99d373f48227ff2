"""The engine's Messages SSE stream, relayed event by event with the measured gaps fixed (pure, unit-tested):

* `message_delta` of a turn a stop sequence ended says `stop_reason: stop_sequence` (native: end_turn);
* an assistant prefill the engine repeats at the start of the first text block is cut, as it streams
  (text is held back only while it still matches the prefill);
* an `error` event gets Anthropic's shape;
* a stream that ends before `message_stop` (the engine died, the connection broke) ends with an `error`
  event (api_error), never as if the turn had finished: a client must not take half an answer for a whole.
  `message_delta` (the stop_reason) is held until `message_stop` arrives, so a broken stream never says
  end_turn first.
"""

from __future__ import annotations

import json

from cardforge.serve.anthropic.translate import engine_error, error_body, fix_stop

Event = tuple[str, dict]


def sse(event: Event) -> str:
    name, data = event
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class StreamGuard:
    def __init__(self, prefill: str = ""):
        self.prefill = prefill
        self.stripping = bool(prefill)
        self.held = ""
        self.text_index: int | None = None  # index of the first text block (where a prefill repeats)
        self.stopped = False  # message_stop seen
        self.failed = False  # an error event was relayed
        self.delta: Event | None = None  # message_delta, held until message_stop

    def _text(self, text: str) -> str:
        if not self.stripping:
            return text
        cand = self.held + text
        if self.prefill.startswith(cand):  # still inside the repeated prefill: hold it
            self.held = cand
            return ""
        self.stripping, self.held = False, ""
        return cand[len(self.prefill):] if cand.startswith(self.prefill) else cand

    def feed(self, name: str, data: dict) -> list[Event]:
        if not isinstance(data, dict):  # `data: 5`, `data: []`: not an event of the Messages stream
            self.failed = True
            return [("error", error_body("api_error", f"the engine sent a malformed stream event: {str(data)[:200]}"))]
        kind = data.get("type", name)
        if kind == "content_block_start" and (data.get("content_block") or {}).get("type") == "text" \
                and self.text_index is None:
            self.text_index = data.get("index")
        elif kind == "content_block_delta" and data.get("index") == self.text_index \
                and (data.get("delta") or {}).get("type") == "text_delta":
            text = self._text(data["delta"].get("text", ""))
            if not text:
                return []
            data = {**data, "delta": {**data["delta"], "text": text}}
        elif kind == "content_block_stop" and data.get("index") == self.text_index and self.stripping:
            self.stripping, self.held = False, ""  # the whole text repeated (part of) the prefill: nothing new
        elif kind == "message_delta":
            delta = dict(data.get("delta") or {})
            delta["stop_reason"] = fix_stop(delta.get("stop_reason"), delta.get("stop_sequence"))
            self.delta = (name, {**data, "delta": delta})
            return []
        elif kind == "message_stop":
            self.stopped = True
            held, self.delta = self.delta, None
            return ([held] if held else []) + [(name, data)]
        elif kind == "error" or name == "error":
            self.failed = True
            if data.get("type") != "error" or not isinstance(data.get("error"), dict):
                _, data = engine_error(500, data)
            return [("error", data)]
        return [(name, data)]

    def finish(self) -> list[Event]:
        """Called when the engine's stream ends: an error event unless the turn really ended."""
        if self.stopped or self.failed:
            return []
        return [("error", error_body("api_error", "the engine's stream ended before message_stop (connection "
                                                  "closed mid-answer): the turn is incomplete"))]


def parse_sse(lines):
    """(event name, data dict) pairs from SSE lines (an iterable of str, no trailing newlines)."""
    name, data = None, []
    for line in lines:
        if line == "":
            if data:
                yield name or "message", json.loads("\n".join(data))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:  # a last event without its blank line
        yield name or "message", json.loads("\n".join(data))
