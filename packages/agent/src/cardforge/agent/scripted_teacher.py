"""A scripted expert teacher: a documented TEST DOUBLE of the teacher API (an OpenAI-compatible
/v1/chat/completions server on 127.0.0.1, started by our code), strictly better than any small student on
the proof task family (cardforge.agent.proof_tasks) and reachable offline.

    teacher=scripted_expert                      (the data stage starts it for its duration)
    python -m cardforge.agent.scripted_teacher    (standalone: prints its URL, serves until Ctrl-C)

What it is: a policy, not a model. It reads the question text of the conversation (either surface form of
every proof kind; it never sees the answer key) and answers the ReAct way, one step per request:
  1. no observation yet -> one sentence of reasoning, then ONE Qwen3 XML tool call (python or shell) whose
     program prints the answer;
  2. the last user turn is a <tool_response> -> the integer the tool printed, as "Final answer: N" (an error
     or no integer in the observation -> it says so without a number: the judge rejects that sample).
Anything it does not recognise gets a plain refusal (no number, no call). Everything downstream of it is the
real pipeline: the data stage runs its calls in the bubblewrap sandbox (execute mode), judges, rejection-
samples, and the student is trained on the result.

Simulated tool results (data.tool_results=simulate, the card's v1): the data stage asks the teacher itself
to role-play the runtime (tools.SIMULATOR_SYSTEM). This double then models what an LLM role-player does: it
cannot run code and is only shown the call, never the workspace, so for a product it writes the right
magnitude with the first 4 digits right and the rest invented, and for a question about a file it invents a
plausible count. The invented digits are seeded by the call, so runs repeat exactly.

The wire protocol is the OpenAI one the eval client speaks: streaming (SSE `data:` chunks with delta.content,
a final chunk with finish_reason and usage, then `data: [DONE]`) and non-streaming. `stop` strings cut the
text as llama-server does (the stop string is not returned, finish_reason "stop"); `max_tokens` (counted as
~4 characters a token) cuts it with finish_reason "length". GET /health and /v1/models answer too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import threading
import time
from typing import Iterator

from cardforge.agent.tools import SIMULATOR_SYSTEM

MODEL = "scripted-expert"

_PATTERNS = [  # (kind, regex over the question); both surface forms of every kind
    ("mul", re.compile(r"What is (\d+) \* (\d+)\?")),
    ("mul", re.compile(r"exact product of (\d+) and (\d+)")),
    ("count", re.compile(r"values\.txt.*?(?:greater than|exceeds) (\d+)", re.S)),
    ("sum", re.compile(r"qty.*sales\.csv|sales\.csv.*qty", re.S)),
    ("grep", re.compile(r"server\.log.*?(?:contain the word|mention) ([A-Z]+)", re.S)),
]

_REASON = {
    "mul": "Multiplying two 12-digit numbers by hand is error-prone, so I compute the exact product in Python.",
    "count": "I read values.txt and count the numbers above {0} with a short Python program.",
    "sum": "I add up the qty column of sales.csv with Python's csv module.",
    "grep": "grep -c counts the lines of server.log that contain {0}.",
}


def _call(name: str, arg: str, value: str) -> str:
    return f"<tool_call>\n<function={name}>\n<parameter={arg}>\n{value}\n</parameter>\n</function>\n</tool_call>"


def _action(kind: str, groups: tuple[str, ...]) -> str:
    if kind == "mul":
        a, b = groups
        return _REASON[kind] + "\n\n" + _call("python", "code", f"print({a} * {b})")
    if kind == "count":
        (t,) = groups
        code = f'print(sum(1 for line in open("values.txt") if int(line) > {t}))'
        return _REASON[kind].format(t) + "\n\n" + _call("python", "code", code)
    if kind == "sum":
        code = 'import csv\nprint(sum(int(row["qty"]) for row in csv.DictReader(open("sales.csv"))))'
        return _REASON[kind] + "\n\n" + _call("python", "code", code)
    (level,) = groups
    return _REASON[kind].format(level) + "\n\n" + _call("shell", "command", f"grep -c {level} server.log")


def recognise(question: str) -> tuple[str, tuple[str, ...]] | None:
    for kind, pat in _PATTERNS:
        m = pat.search(question)
        if m:
            return kind, m.groups()
    return None


def _text(content) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _observation(messages: list[dict]) -> str | None:
    last = messages[-1] if messages else {}
    body = _text(last.get("content"))
    if last.get("role") == "tool":
        return body
    m = re.search(r"<tool_response>\n?(.*?)\n?</tool_response>", body, re.S) if last.get("role") == "user" else None
    return m.group(1) if m else None


def simulate(call_text: str) -> str:
    """The modelled LLM role-play of one tool call (see the module doc): invented where it cannot know."""
    rng = random.Random(hashlib.sha256(call_text.encode()).hexdigest())
    m = re.search(r"print\((\d+) \* (\d+)\)", call_text)
    if m:
        exact = str(int(m.group(1)) * int(m.group(2)))
        return exact[:4] + "".join(str(rng.randint(0, 9)) for _ in exact[4:])
    if "values.txt" in call_text:
        return str(rng.randint(20, 280))
    if "sales.csv" in call_text:
        return str(rng.randint(20000, 30000))
    if "server.log" in call_text:
        return str(rng.randint(50, 100))
    return "OK"


def respond(messages: list[dict]) -> str:
    """The expert's next assistant message for an OpenAI-style message list."""
    if messages and messages[0].get("role") == "system" and _text(messages[0].get("content")) == SIMULATOR_SYSTEM:
        return simulate(_text(messages[-1].get("content")))
    question = next((_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
    found = recognise(question)
    if found is None:
        return "I do not know how to solve this task."
    obs = _observation(messages)
    if obs is None:
        return _action(*found)
    first = obs.strip().splitlines()[0].strip() if obs.strip() else ""
    if re.fullmatch(r"-?\d+", first) and "[exit code 0]" in obs or re.fullmatch(r"-?\d+", obs.strip()):
        return f"The tool printed {first}.\n\nFinal answer: {first}"
    return "The tool did not print a number, so I cannot give the answer."


def _cut(text: str, stop: list[str], max_tokens: int | None) -> tuple[str, str]:
    hits = [text.find(s) for s in stop if s and s in text]
    finish = "stop"
    if hits:
        text = text[: min(hits)]
    if max_tokens is not None and len(text) > 4 * max_tokens:
        text, finish = text[: 4 * max_tokens], "length"
    return text, finish


def _usage(messages: list[dict], text: str) -> dict:
    prompt = sum(len(_text(m.get("content"))) for m in messages) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": len(text) // 4 + 1,
            "total_tokens": prompt + len(text) // 4 + 1}


def make_app():
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            messages = list(body["messages"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": {"message": "body needs a messages list", "type": "invalid_request"}},
                                     status=400)
        stop = body.get("stop") or []
        text, finish = _cut(respond(messages), [stop] if isinstance(stop, str) else list(stop), body.get("max_tokens"))
        cid, created = f"chatcmpl-{hashlib.sha1(text.encode()).hexdigest()[:12]}", int(time.time())
        usage = _usage(messages, text)
        if not body.get("stream"):
            return web.json_response({"id": cid, "object": "chat.completion", "created": created, "model": MODEL,
                                      "choices": [{"index": 0, "finish_reason": finish,
                                                   "message": {"role": "assistant", "content": text}}],
                                      "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL}
        await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for i in range(0, len(text), 16):
            await send({**base, "choices": [{"index": 0, "delta": {"content": text[i:i + 16]}, "finish_reason": None}]})
        await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({**base, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(_request):
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "root": MODEL}]})

    async def health(_request):
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


@contextlib.contextmanager
def serve(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the server in a background thread; yields its base URL (without /v1). Stops on exit."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, host, port)
    loop.run_until_complete(site.start())
    bound = site._server.sockets[0].getsockname()[1]  # port 0: the one the OS picked
    thread = threading.Thread(target=loop.run_forever, name="scripted-teacher", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{bound}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cardforge.agent.scripted_teacher",
                                description="Serve the scripted expert teacher (a test double) on 127.0.0.1.")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    args = p.parse_args(argv)
    with serve(port=args.port) as url:
        print(f"scripted teacher at {url}/v1 (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
