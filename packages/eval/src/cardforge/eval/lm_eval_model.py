"""lm-eval integration: `cardforge-stream`, an lm-eval model backed by our streaming harness.

    import cardforge.eval.lm_eval_model  # registers the model
    lm_eval.simple_evaluate(model="cardforge-stream", tasks=[...], task_manager=TaskManager(include_path=...),
        model_args={"base_url": "http://127.0.0.1:8080", "records": "out/lm_eval.jsonl"}, apply_chat_template=True)

Any `generate_until` task runs through `run_questions`, so it gets what lm-eval's local-chat-completions
lacks: SSE streaming, finish_reason / usage / reasoning per request in a JSONL, retries that never abort
the run, and resume (a finished request is not sent again). Two choices, both for thinking models:
* a task's `until` strings are applied to the ANSWER after generation, not sent as `stop` (mmlu_generative
  stops at "\\n", which would end a thinking model inside its thought);
* the scored text is the answer only; a truncated output (finish=length) or an error scores as "".
Log-likelihood requests are not supported (a chat endpoint has no prompt logprobs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from cardforge.agent.client import Sampling
from cardforge.eval.harness import HarnessOptions, Question, run_questions


def _messages(context: Any) -> list[dict]:
    # with apply_chat_template=True, lm-eval hands us what apply_chat_template returned: the JSON messages
    if isinstance(context, str):
        try:
            msgs = json.loads(context)
            if isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m for m in msgs):
                return msgs
        except json.JSONDecodeError:
            pass
        return [{"role": "user", "content": context}]
    return list(context)


def cut_at_until(text: str, until: list[str]) -> str:
    cut = len(text)
    for u in until:
        if u and (i := text.find(u)) >= 0:
            cut = min(cut, i)
    return text[:cut]


@register_model("cardforge-stream")
class CardforgeStreamLM(LM):
    def __init__(self, base_url: str, records: str, model: str | None = None, max_tokens: int = 1024,
                 temperature: float = 0.6, top_p: float = 0.95, concurrency: int = 4, timeout_s: float = 1800,
                 retries: int = 2, thinking: bool = True, seed: int = 1234, progress: bool = True,
                 model_id: str | None = None, **_: Any):
        super().__init__()
        self.base_url, self.records = base_url, Path(records)
        self.opts = HarnessOptions(
            Sampling(float(temperature), float(top_p), int(max_tokens), int(seed), (), _bool(thinking)),
            concurrency=int(concurrency), timeout_s=float(timeout_s), retries=int(retries), model=model,
            model_id=str(model_id) if model_id else None, progress=_bool(progress))  # resume key: see harness
        self.last_records: list[dict] = []

    @property
    def tokenizer_name(self) -> str:
        return "cardforge-stream"  # the server applies its own chat template

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return json.dumps(chat_history, ensure_ascii=False)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        questions, untils = [], []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            until = gen_kwargs.get("until") or []
            msgs = _messages(context)
            key = json.dumps([msgs, gen_kwargs.get("max_gen_toks")], sort_keys=True, default=str)
            questions.append(Question("req-" + hashlib.sha256(key.encode()).hexdigest()[:16], msgs, ""))
            untils.append([until] if isinstance(until, str) else list(until))
        unique = list({q.id: q for q in questions}.values())  # repeats of one request are asked once
        recs = run_questions(unique, self.base_url, lambda a: a, self.opts, self.records, label="lm-eval",
                             suite="generate_until")
        by_id = {r["id"]: r for r in recs}
        self.last_records = recs
        out = []
        for q, until in zip(questions, untils):
            r = by_id.get(q.id, {})
            text = r.get("answer", "") if r.get("finish_reason") == "stop" else ""
            out.append(cut_at_until(text, until))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("cardforge-stream serves generate_until tasks only (no prompt logprobs)")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("cardforge-stream serves generate_until tasks only (no prompt logprobs)")


def _bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


def evaluate(tasks: list[str], include_path: str | None, model_args: dict[str, Any], *, limit: int | None = None,
             apply_chat_template: bool = True) -> dict[str, Any]:
    """Run lm-eval tasks against `model_args['base_url']`; returns lm-eval's results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    # with an include_path only its tasks are indexed: indexing lm-eval's thousands of built-in task YAMLs
    # costs about a minute on a small CPU
    tm = TaskManager(include_path=include_path, include_defaults=False) if include_path else TaskManager()
    res = lm_eval.simple_evaluate(model="cardforge-stream", model_args=model_args, tasks=list(tasks),
                                  task_manager=tm, limit=limit, apply_chat_template=apply_chat_template,
                                  log_samples=False)
    return res or {}
