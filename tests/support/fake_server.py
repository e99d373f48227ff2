"""A fault-injecting OpenAI-compatible chat server on 127.0.0.1, for testing the harness (real HTTP).

Run as: python tests/support/fake_server.py --port 0   (prints "listening on http://127.0.0.1:PORT")

Behaviour is chosen per request by tags in the last user message, so one run can mix faults:
  QID=name          the request counter key (default: a hash of the message)
  ANSWER=X          the final answer "Answer: X" (default: a letter derived from the message hash)
  FAULT=slow:S      sleep S seconds before the first byte        FAULT=http500      always HTTP 500
  FAULT=http500_once  HTTP 500 on the first request, then fine   FAULT=drop         close mid-answer
  FAULT=drop_once   close mid-answer (after 2 chunks) on the first request, then fine
  FAULT=badjson     an invalid JSON chunk mid-stream             FAULT=length       think only, then length
  FAULT=http429_once:RA / http503_once:RA   that status with `Retry-After: RA` on the first request, then fine
  FAULT=trickle:N:S  the thought in N chunks, S seconds apart (a slow but healthy stream)
  FAULT=stall:S      one chunk, then S seconds of silence mid-stream, then the rest
`--delay S` slows every answer (kill -9 tests); `--think-tags` sends <think>..</think> in `content`
instead of `reasoning_content`. GET /counts returns {key: requests seen}; GET /stats returns the most requests
ever in flight at once, the last Authorization header and the requested model names; `times[key]` (in
process) holds when each request of a key arrived (time.monotonic()). Every stream ends like
llama-server's: a last chunk with usage and `timings` before `data: [DONE]`.

Scripted mode (multi-turn tests: the agentic runner, BFCL): `FakeServer(script=fn)` answers with
`fn(messages)` when it returns a string (None: the behaviour above). The reply is streamed as the answer,
cut before the first of the request's `stop` strings (as llama-server does); a reply "FAULT=http500" or
"FAULT=drop" injects that fault instead. `conversation_script({key: [reply0, reply1, ...]})` picks the
conversation whose first user message contains `key` and the reply by the number of assistant turns so
far; `--script FILE.json` serves such a mapping. Scripted requests count under the key "scripted".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter, defaultdict
from typing import Callable

from aiohttp import web

_TAG = re.compile(r"\b(QID|ANSWER|FAULT)=([\w:.]+)")


def _tags(text: str) -> dict[str, str]:
    return {k: v for k, v in _TAG.findall(text)}


def _chunk(delta: dict | None = None, finish: str | None = None, **extra) -> bytes:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    body.update(extra)
    return f"data: {json.dumps(body)}\n\n".encode()


class FakeServer:
    def __init__(self, *, delay_s: float = 0.0, think_tags: bool = False,
                 script: Callable[[list[dict]], str | None] | None = None):
        self.delay_s, self.think_tags, self.script = delay_s, think_tags, script
        self.counts: Counter[str] = Counter()
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        self.in_flight = self.peak_in_flight = 0
        self.authorization: str | None = None
        self.models: Counter[str] = Counter()
        self.app = web.Application()
        self.app.add_routes([web.post("/v1/chat/completions", self.chat), web.get("/counts", self.get_counts),
                             web.get("/stats", self.get_stats),
                             web.get("/health", lambda r: web.json_response({"status": "ok"}))])
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get_counts(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.counts))

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"peak_in_flight": self.peak_in_flight, "authorization": self.authorization,
                                  "models": dict(self.models)})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.authorization = request.headers.get("Authorization")
        try:
            return await self._chat(request)
        except ConnectionError:  # the client gave up (timeout test) or we dropped it on purpose
            return web.Response(status=499)
        finally:
            self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.models[str(body.get("model"))] += 1
        if self.script is not None and (reply := self.script(body["messages"])) is not None:
            return await self._scripted(request, body, reply)
        text = body["messages"][-1]["content"]
        tags = _tags(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        key = tags.get("QID", digest[:12])
        self.counts[key] += 1
        self.times[key].append(time.monotonic())
        fault = tags.get("FAULT", "")
        letter = tags.get("ANSWER", "ABCD"[int(digest, 16) % 4])
        if fault == "http500" or (fault == "http500_once" and self.counts[key] == 1):
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        if fault.startswith(("http429_once:", "http503_once:")) and self.counts[key] == 1:
            status, wait = int(fault[4:7]), fault.split(":", 1)[1]
            return web.json_response({"error": {"message": "injected overload"}}, status=status,
                                     headers={"Retry-After": wait})
        if fault.startswith("slow:"):
            await asyncio.sleep(float(fault.split(":", 1)[1]))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        thought, answer = "Let me think about the choices.", f"The best choice is {letter}.\nAnswer: {letter}"
        if fault.startswith("trickle:"):
            n, gap = fault.split(":")[1:3]
            for i in range(int(n)):
                await resp.write(_chunk({"reasoning_content": f"step {i}. "}))
                await asyncio.sleep(float(gap))
        if fault.startswith("stall:"):
            await resp.write(_chunk({"reasoning_content": "Hmm."}))
            await asyncio.sleep(float(fault.split(":", 1)[1]))
        if self.think_tags:
            await resp.write(_chunk({"content": f"<think>\n{thought}\n</think>\n\n"}))
        else:
            await resp.write(_chunk({"reasoning_content": thought}))
        if fault == "drop" or (fault == "drop_once" and self.counts[key] == 1):
            await resp.write(_chunk({"content": "The best"}))
            request.transport.close()  # the connection dies mid-answer: no finish_reason, no [DONE]
            return resp
        if fault == "badjson":
            await resp.write(b"data: {\"choices\": [{\"delta\": {\"content\": \"trunc\n\n")
            await resp.write_eof()
            return resp
        finish = "stop"
        if fault == "length":
            finish = "length"  # ran out of tokens inside the thought: no answer at all
        else:
            await resp.write(_chunk({"content": answer}))
        n_out = 12 if finish == "stop" else int(body.get("max_tokens", 16))
        await resp.write(_chunk({}, finish))
        await resp.write(_chunk(None, None, choices=[], usage={"prompt_tokens": len(text.split()),
                                                               "completion_tokens": n_out},
                                timings={"predicted_n": n_out, "predicted_per_second": 100.0,
                                         "draft_n": 0, "draft_n_accepted": 0}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _scripted(self, request: web.Request, body: dict, reply: str) -> web.StreamResponse:
        self.counts["scripted"] += 1
        if reply == "FAULT=http500":
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        for stop in body.get("stop") or []:
            if stop in reply:
                reply = reply[:reply.index(stop)]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        thought = "Scripted step."
        if self.think_tags:
            await resp.write(_chunk({"content": f"<think>\n{thought}\n</think>\n\n"}))
        else:
            await resp.write(_chunk({"reasoning_content": thought}))
        half = len(reply) // 2
        await resp.write(_chunk({"content": reply[:half]}))
        if reply == "FAULT=drop":
            request.transport.close()
            return resp
        await resp.write(_chunk({"content": reply[half:]}))
        n_out = max(1, len(reply.split()))
        await resp.write(_chunk({}, "stop"))
        await resp.write(_chunk(None, None, choices=[], usage={"prompt_tokens": 10, "completion_tokens": n_out},
                                timings={"predicted_n": n_out, "predicted_per_second": 100.0,
                                         "draft_n": 0, "draft_n_accepted": 0}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # --- run in a background thread (tests) ---
    def start(self, port: int = 0) -> "FakeServer":
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def stop(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def conversation_script(replies: dict[str, list[str]]) -> Callable[[list[dict]], str | None]:
    """{text in the first user message: [reply to turn 0, turn 1, ...]} (past the end: the last reply)."""
    def script(messages: list[dict]) -> str | None:
        first = next((m.get("content") or "" for m in messages if m.get("role") == "user"), "")
        turn = sum(m.get("role") == "assistant" for m in messages)
        for key, seq in replies.items():
            if key in first and seq:
                return seq[min(turn, len(seq) - 1)]
        return None

    return script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--think-tags", action="store_true")
    ap.add_argument("--script", help="JSON file {text in the first user message: [reply per turn]}")
    a = ap.parse_args()
    script = None
    if a.script:
        with open(a.script, encoding="utf-8") as f:
            script = conversation_script(json.load(f))
    srv = FakeServer(delay_s=a.delay, think_tags=a.think_tags, script=script).start(a.port)
    print(f"listening on {srv.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
