"""The teacher: any OpenAI-compatible endpoint, reached through `cardforge.agent.client`, the one client of
teacher and eval (streaming, thinking on, retries with jittered backoff and Retry-After, an idle timeout
apart from the request's total cap; a request that fails for good comes back as finish_reason="error" and
never raises, so the run goes on).

Spend: every answer's tokens (prompt / completion / reasoning) are priced with `teacher.price` (per million
tokens in / out) and appended to a ledger (`<outputs>/data/spend.jsonl`, one whole line per request, THE
appender), so the total survives a kill and a re-run: `Spend.load(ledger)` sums it; the data stage stops
starting samples once `data.budget` (tokens or cost) is reached.

`teacher=local_smollm2` (kind: embedded): `open_teacher` starts llama-server on 127.0.0.1 with the embedded
SmolLM2 GGUF for the block and stops it after. `kind: endpoint`: base_url + the key from `api_key_env`.
`teacher=scripted_expert` (kind: scripted): the scripted expert test double (cardforge.agent.scripted_teacher),
served on 127.0.0.1 for the block: the teacher that is strictly better than the student on the proof tasks.

Tool calls are prompted, not native: the tool schemas go into the system prompt in the same words our
chat template uses and the teacher writes Qwen3 XML calls in its text, which `parse_assistant` reads.
Why: the eval client streams text and reasoning only (no `tools` field, no delta.tool_calls), and the
student is trained on exactly this XML. Generation stops at </tool_call> (one call per step) and at
<tool_response> (a model must not invent its own observation).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from cardforge.core.chat import ToolCall
from cardforge.core.errors import UserError
from cardforge.core.chat.jsonl import append_record, read_records
from cardforge.agent.client import Completion, Price, Sampling, complete

STOP = ("</tool_call>", "<tool_response>")


@dataclass
class Spend:
    """What the teacher cost so far: requests, tokens, money (in the price's currency); `ledger` (a JSONL
    file) makes it durable: `add` appends one line per request, `load` sums a ledger written before."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    ledger: Path | None = field(default=None, repr=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def _count(self, r: dict) -> None:
        self.requests += 1
        self.prompt_tokens += int(r.get("prompt_tokens") or 0)
        self.completion_tokens += int(r.get("completion_tokens") or 0)
        self.reasoning_tokens += int(r.get("reasoning_tokens") or 0)
        self.cost += float(r.get("cost") or 0.0)

    def add(self, c: Completion, price: Price | None, label: str = "") -> dict:
        """Count one answer with every attempt it took: the tokens the server reported, plus what attempts that
        broke off mid-stream had generated (`dropped_tokens`, estimated one per chunk) and, where the answer's
        usage tells the prompt's size, that prompt once more per such attempt (the server read it each time)."""
        prompt = (c.prompt_tokens or 0) * (1 + c.dropped_attempts)
        completion = (c.completion_tokens or 0) + c.dropped_tokens
        r = {"t": round(time.time(), 3), "label": label, "finish_reason": c.finish_reason,
             "prompt_tokens": prompt, "completion_tokens": completion,
             "reasoning_tokens": c.reasoning_tokens or 0, "cached_tokens": c.cached_tokens or 0,
             "cost": price.cost(prompt, completion) if price else 0.0}
        if c.dropped_attempts:
            r["dropped_tokens"], r["dropped_attempts"] = c.dropped_tokens, c.dropped_attempts
        self._count(r)
        if self.ledger is not None:
            append_record(self.ledger, r)
        return r

    @classmethod
    def load(cls, ledger: str | os.PathLike | None) -> "Spend":
        spend = cls(ledger=Path(ledger) if ledger else None)
        for r in read_records(ledger) if ledger else []:
            spend._count(r)
        return spend

    def reached(self, tokens: int | None, cost: float | None) -> str | None:
        """Why the budget is spent ("tokens 1200 >= 1000"), or None while there is budget left."""
        if tokens is not None and self.tokens >= tokens:
            return f"teacher tokens {self.tokens} >= data.budget.tokens={tokens}"
        if cost is not None and self.cost >= cost:
            return f"teacher cost {self.cost:.4f} >= data.budget.cost={cost}"
        return None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("ledger")
        d["tokens"], d["cost"] = self.tokens, round(self.cost, 6)
        return d


@dataclass
class Teacher:
    base_url: str  # without /v1 (the client adds /v1/chat/completions)
    model: str | None
    sampling: Sampling
    timeout_s: float
    retries: int
    concurrency: int
    api_key: str | None = None
    label: str = ""
    idle_timeout_s: float | None = None  # None: the session's default
    price: Price | None = None
    spend: Spend | None = None  # counts every answer when set

    async def ask(self, session, messages: list[dict], sampling: Sampling | None = None) -> Completion:
        c = await complete(session, self.base_url, messages, sampling or self.sampling, timeout_s=self.timeout_s,
                           retries=self.retries, model=self.model, api_key=self.api_key,
                           idle_timeout_s=self.idle_timeout_s)
        if self.spend is not None:
            self.spend.add(c, self.price, self.label)
        # the server cut the text at our stop string: put the closing tag back so the call parses
        if c.finish_reason == "stop" and c.content.count("<tool_call>") > c.content.count("</tool_call>"):
            c.content = c.content.rstrip() + "\n</tool_call>"
        return c


def price_of(t: DictConfig) -> Price | None:
    """teacher.price as a Price; None when the price is unknown (null): tokens are still counted."""
    p = t.get("price") if hasattr(t, "get") else None
    if not p or p.get("input_per_m") is None or p.get("output_per_m") is None:
        return None
    return Price(float(p.input_per_m), float(p.output_per_m))


def _strip_v1(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def tools_prompt(system: str, tools: list[dict]) -> str:
    """The system prompt the teacher sees: the task's system text + the tool block of our chat template."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (f"{system}\n\n# Tools\n\nYou can call the functions below. Their JSON schemas are inside "
            f"<tools></tools>:\n<tools>\n{listed}\n</tools>\n\nTo call a function, write a block in exactly this "
            "form, one <parameter> per argument:\n<tool_call>\n<function=function_name>\n<parameter=argument_name>"
            "\nvalue\n</parameter>\n</function>\n</tool_call>\n\nThink before each call. Results come back inside "
            "<tool_response></tool_response>.")


def call_xml(call: ToolCall) -> str:
    params = "".join(f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}\n"
                     f"</parameter>\n" for k, v in call.arguments.items())
    return f"<tool_call>\n<function={call.name}>\n{params}</function>\n</tool_call>"


def sampling_of(t: DictConfig, seed: int | None = None) -> Sampling:
    return Sampling(float(t.temperature), float(t.top_p), int(t.max_tokens), seed, STOP, bool(t.thinking))


def embedded_gguf(name: str) -> Path:
    if name != "smollm2-135m-instruct":
        raise UserError(f"teacher.model={name!r}: the embedded teacher serves smollm2-135m-instruct only "
                        "(or use teacher=openai_endpoint with your own server)")
    from cardforge.core.models.smollm2 import gguf_path

    return gguf_path()


@contextlib.contextmanager
def open_teacher(cfg: DictConfig, log_dir: Path, spend: Spend | None = None) -> Iterator[Teacher]:
    """The configured teacher for the block; `spend` (if given) counts every answer it gives."""
    t, retries = cfg.teacher, int(cfg.data.retries)
    idle = t.get("idle_timeout_s")
    base = Teacher("", str(t.model), sampling_of(t, int(cfg.data.seed)), float(t.timeout_s), retries,
                   int(t.concurrency), label=str(t.model), idle_timeout_s=float(idle) if idle else None,
                   price=price_of(t), spend=spend)
    kind = str(t.kind.value if hasattr(t.kind, "value") else t.kind)
    if kind == "scripted":  # the scripted expert, a documented test double (cardforge.agent.scripted_teacher)
        from cardforge.agent.scripted_teacher import serve

        with serve() as url:
            yield replace(base, base_url=url)
        return
    if kind == "endpoint":
        key = (os.environ.get(str(t.api_key_env)) or "").strip() or None  # an env file's trailing newline
        if key and not all(0x21 <= ord(ch) <= 0x7E for ch in key):  # one line naming the variable, never the value
            raise UserError(f"${t.api_key_env}: the API key has spaces, control or non-ASCII characters (a pasted "
                            "line break?), which an HTTP header cannot carry; fix the variable's value")
        if not key and not str(t.base_url).startswith(("http://127.0.0.1", "http://localhost")):
            raise UserError(f"teacher.api_key_env: set ${t.api_key_env} to the API key of {t.base_url}")
        yield replace(base, base_url=_strip_v1(str(t.base_url)), api_key=key)
        return
    from cardforge.serve.launchers.llama_cpp import llama_server

    n, ctx = int(t.concurrency), int(t.ctx_size)
    # the rest (127.0.0.1, a free port, the start timeout) from conf/defaults/serve.yaml (launchers.settings);
    # llama-server splits -c over its --parallel slots: each concurrent request gets teacher.ctx_size
    serve = {"ctx_size": ctx * n, "mtp": {"enabled": False}, "threads": int(t.threads), "served_model_name": str(t.model)}
    with llama_server(embedded_gguf(str(t.model)), serve, extra_args=["--parallel", str(n)],
                      log_path=log_dir / "teacher-server.log") as srv:
        yield replace(base, base_url=srv.base_url)
