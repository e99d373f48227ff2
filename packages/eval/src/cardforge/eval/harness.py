"""The eval harness: a list of questions -> one JSONL record per question, concurrently, resumable.

    records = run_questions(questions, endpoint, opts, out_path, label="distill")

Every question ends with a record: a finish_reason from the server (stop / length) or `finish_reason:
"error"` with the error after all retries; a failing request never stops the run. Records are written as
each answer arrives (see records.py), so kill -9 loses only the requests in flight; rerunning skips what
finished for the same prompt, sampling and served model (`HarnessOptions.model_id`: a rebuilt GGUF is a new
model, so its questions are asked again). The progress bar shows live accuracy over the answered questions.

`score=` (a benchmark's `score(question, completion) -> dict`, e.g. coding: run the answer's code in the
sandbox) adds fields to each record and decides `parsed` / `correct`. It is called for every completion,
in a worker thread (asyncio.to_thread: a sandbox run must not stall the other requests' streams); a
completion that did not finish with `stop` is never correct, whatever the scorer says, and a scorer that
raises leaves `correct: false` with `score_error` set instead of stopping the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from cardforge.eval import records as rec
from cardforge.agent.client import Completion, Sampling, complete, new_session


@dataclass
class Question:
    id: str
    messages: list[dict[str, str]]
    gold: str  # the correct answer as the parser returns it (a letter for multiple choice)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.messages, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class HarnessOptions:
    sampling: Sampling
    concurrency: int = 4
    timeout_s: float = 1800.0
    idle_timeout_s: float = 300.0  # no byte for this long: the attempt fails and is retried (eval.idle_timeout_s)
    retries: int = 2
    model: str | None = None  # the served model name, if the server needs one
    # identity of the model behind the endpoint (eval/stage.py model_id(): "gguf-sha256:<hex>"); part of the
    # resume key, so answers of an older build are never reused. None: records without an id match.
    model_id: str | None = None
    think_open: bool = False
    progress: bool = True

    @property
    def sampling_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self.sampling), sort_keys=True).encode()).hexdigest()[:16]


# parse(answer_text) -> the parsed answer, or None (a parse failure: never a guess)
Parser = Callable[[str], "str | None"]
# score(question, completion) -> extra record fields, including parsed / correct (blocking: runs in a thread)
Scorer = Callable[[Question, Completion], dict]


def make_record(q: Question, c: Completion, parse: Parser, opts: HarnessOptions, label: str, suite: str) -> dict:
    # a truncated answer (length) or an error has no answer to score, even if a letter appears in it
    parsed = parse(c.content) if c.finish_reason == "stop" else None
    return {
        "id": q.id, "suite": suite, "model": label, "model_id": opts.model_id, "prompt_hash": q.prompt_hash,
        "sampling_hash": opts.sampling_hash, "reasoning": c.reasoning, "answer": c.content,
        "parsed": parsed, "gold": q.gold, "correct": parsed is not None and parsed == q.gold,
        "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens, "reasoning_tokens": c.reasoning_tokens, "latency_s": c.latency_s,
        "ttft_s": c.ttft_s,
        "error": c.error, "attempts": c.attempts, "attempt_errors": c.errors, "timings": c.timings,
    }


def apply_score(r: dict, q: Question, c: Completion, score: Scorer) -> dict:
    """Merge a scorer's fields into a record (blocking; see the module doc for the rules)."""
    try:
        fields = score(q, c)
    except Exception as e:  # noqa: BLE001 - a scorer bug must cost one record, not the run
        fields = {"correct": False, "score_error": f"{type(e).__name__}: {e}"[:500]}
    r.update(fields)
    if c.finish_reason != "stop":
        r["parsed"], r["correct"] = None, False
    r["correct"] = bool(r.get("correct"))
    return r


async def _run(questions: list[Question], base_url: str, parse: Parser, opts: HarnessOptions, out: Path,
               label: str, suite: str, score: Scorer | None = None) -> None:
    prior = rec.current_by_id(out, {q.id: q.prompt_hash for q in questions}, opts.sampling_hash, opts.model_id)
    done = {qid for qid, r in prior.items() if r.get("finish_reason") in rec.FINISHED}
    todo = [q for q in questions if q.id not in done]
    n_correct = sum(1 for q in questions if q.id in done and prior[q.id].get("correct"))
    bar = tqdm(total=len(questions), initial=len(done), desc=f"{label}/{suite}", disable=not opts.progress,
               file=sys.stderr, dynamic_ncols=True)
    state = {"answered": len(done), "correct": n_correct, "errors": 0}
    sem = asyncio.Semaphore(max(1, opts.concurrency))

    async with new_session(opts.concurrency, idle_timeout_s=opts.idle_timeout_s) as session:
        async def one(q: Question) -> None:
            async with sem:
                c = await complete(session, base_url, q.messages, opts.sampling, timeout_s=opts.timeout_s,
                                   retries=opts.retries, model=opts.model, think_open=opts.think_open)
            r = make_record(q, c, parse, opts, label, suite)
            if score is not None:
                r = await asyncio.to_thread(apply_score, r, q, c, score)
            rec.append_record(out, r)  # the event loop is the only writer: no interleaving
            state["answered"] += 1
            state["correct"] += int(r["correct"])
            state["errors"] += int(c.finish_reason == "error")
            bar.update(1)
            bar.set_postfix(acc=f"{state['correct'] / state['answered']:.3f}", err=state["errors"])

        await asyncio.gather(*(one(q) for q in todo))
    bar.close()


def run_questions(questions: list[Question], base_url: str, parse: Parser, opts: HarnessOptions,
                  out_path: str | Path, *, label: str = "model", suite: str = "suite",
                  score: Scorer | None = None) -> list[dict]:
    """Ask every unfinished question; return the newest record of each question for this prompt, sampling and
    model (opts.model_id), in question order.
    `score`: see the module doc (fields and correctness from running the answer, off the event loop)."""
    out = Path(out_path)
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{suite}: question ids are not unique")
    asyncio.run(_run(questions, base_url, parse, opts, out, label, suite, score))
    latest = rec.current_by_id(out, {q.id: q.prompt_hash for q in questions}, opts.sampling_hash, opts.model_id)
    return [latest[q.id] for q in questions if q.id in latest]
