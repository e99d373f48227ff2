"""A scripted engine speaking the NATIVE Messages API (/v1/messages, /v1/messages/count_tokens) on
127.0.0.1: a test double for what the tiny models cannot show through a real llama-server (they never
emit a tool call) and for faults no healthy server produces. It records every request body it gets
(`engine.seen`), so a test sees exactly what the guard forwarded.

The reply is chosen by a tag in the first user message's text:
  MODE=tool_use   one tool_use block (the first declared tool, or "none_declared"), input streamed in two
                  input_json_delta pieces; stop_reason tool_use
  MODE=drop       message_start, one text delta, then the connection is closed (no message_stop)
  MODE=no_stop    a text block and message_delta, then the stream ends cleanly, without message_stop
  MODE=error      an `error` event in llama-server's shape ({"code", "message", "type"}) mid-stream
  (none)          one text block "ok" and end_turn
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _first_text(body: dict) -> str:
    for m in body.get("messages") or []:
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            return " ".join(b.get("text", "") for b in c if isinstance(b, dict))
    return ""


def _events(body: dict, mode: str) -> list[tuple[str, dict]]:
    start = {"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "content": [], "model": "fake",
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 0}}}
    evs: list[tuple[str, dict]] = [("message_start", start)]
    if mode == "tool_use":
        tools = body.get("tools") or []
        name = tools[0]["name"] if tools else "none_declared"
        evs += [("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                    "type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "input_json_delta", "partial_json": '{"command": '}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "input_json_delta", "partial_json": '"ls"}'}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0})]
        reason = "tool_use"
    else:
        evs += [("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "ok"}})]
        if mode == "drop":
            return evs
        if mode == "error":
            return evs + [("error", {"code": 500, "message": "slot died", "type": "server_error"})]
        evs.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        reason = "end_turn"
    evs.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
                                  "usage": {"output_tokens": 3}}))
    if mode != "no_stop":
        evs.append(("message_stop", {"type": "message_stop"}))
    return evs


def _message(events: list[tuple[str, dict]]) -> dict:
    msg = dict(events[0][1]["message"])
    blocks: dict[int, dict] = {}
    for name, d in events:
        if name == "content_block_start":
            blocks[d["index"]] = dict(d["content_block"])
        elif name == "content_block_delta":
            b, delta = blocks[d["index"]], d["delta"]
            if delta["type"] == "text_delta":
                b["text"] += delta["text"]
            else:
                b["_json"] = b.get("_json", "") + delta["partial_json"]
        elif name == "message_delta":
            msg.update(d["delta"])
    for b in blocks.values():
        if "_json" in b:
            b["input"] = json.loads(b.pop("_json"))
    msg["content"] = [blocks[i] for i in sorted(blocks)]
    return msg


class MessagesEngine:
    def __init__(self):
        self.seen: list[dict] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._json(200, {"status": "ok"})

            def _json(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                engine.seen.append(body)
                if self.path == "/v1/messages/count_tokens":
                    return self._json(200, {"input_tokens": len(json.dumps(body))})
                text = _first_text(body)
                mode = text.split("MODE=", 1)[1].split()[0] if "MODE=" in text else ""
                events = _events(body, mode)
                if not body.get("stream"):
                    return self._json(200, _message(events))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()
                self.close_connection = True  # drop and no_stop: the stream simply ends here

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "MessagesEngine":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
