"""The teacher: any OpenAI-compatible endpoint, reached through `cardforge.eval.client` (streaming, thinking
on, retries with backoff, per-request timeout; a request that fails for good comes back as
finish_reason="error" and never raises, so the run goes on).

`teacher=local_smollm2` (kind: embedded): `open_teacher` starts llama-server on 127.0.0.1 with the embedded
SmolLM2 GGUF for the block and stops it after. `kind: endpoint`: base_url + the key from `api_key_env`.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from cardforge.core.chat import ToolCall
from cardforge.core.errors import UserError
from cardforge.eval.client import Completion, Sampling, complete

STOP = ("</tool_call>", "<tool_response>")


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

    async def ask(self, session, messages: list[dict], sampling: Sampling | None = None) -> Completion:
        c = await complete(session, self.base_url, messages, sampling or self.sampling, timeout_s=self.timeout_s,
                           retries=self.retries, model=self.model, api_key=self.api_key)
        # the server cut the text at our stop string: put the closing tag back so the call parses
        if c.finish_reason == "stop" and c.content.count("<tool_call>") > c.content.count("</tool_call>"):
            c.content = c.content.rstrip() + "\n</tool_call>"
        return c


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
def open_teacher(cfg: DictConfig, log_dir: Path) -> Iterator[Teacher]:
    t, retries = cfg.teacher, int(cfg.data.retries)
    base = Teacher("", str(t.model), sampling_of(t, int(cfg.data.seed)), float(t.timeout_s), retries,
                   int(t.concurrency), label=str(t.model))
    if str(t.kind.value if hasattr(t.kind, "value") else t.kind) == "endpoint":
        key = os.environ.get(str(t.api_key_env))
        if not key and not str(t.base_url).startswith(("http://127.0.0.1", "http://localhost")):
            raise UserError(f"teacher.api_key_env: set ${t.api_key_env} to the API key of {t.base_url}")
        yield replace(base, base_url=_strip_v1(str(t.base_url)), api_key=key)
        return
    from cardforge.serve.launchers.llama_cpp import llama_server

    n, ctx = int(t.concurrency), int(t.ctx_size)
    serve = {"host": "127.0.0.1", "port": 0, "ctx_size": ctx * n, "mtp": {"enabled": False}, "threads": int(t.threads),
             "served_model_name": str(t.model), "startup_timeout_s": 120}
    # llama-server splits -c over its --parallel slots: each concurrent request gets teacher.ctx_size
    with llama_server(embedded_gguf(str(t.model)), serve, extra_args=["--parallel", str(n)],
                      log_path=log_dir / "teacher-server.log") as srv:
        yield replace(base, base_url=srv.base_url)
