"""Run agentic tasks with the evaluated model as the actor of the agent runtime's ReAct loop.

    records = run_tasks(tasks, base_url, harness_opts, out_path, label="distill", suite="agentic")

Each task runs `cardforge.agent.react.run_sample` in execute mode: the model sees the tools in its system
prompt exactly as the teacher does (`data.teacher.tools_prompt`), writes Qwen3 XML calls that
`parse_assistant` reads, and each call really runs in the bubblewrap sandbox on the task's workspace
(`data.tools.execute`). Every request goes through the streaming client (`client.complete`, retries,
timeouts) and is logged with its finish_reason. When the episode ends, the task's checker reads the final
workspace; an optional LLM judge (`data.llm_judge`, eval.judge_url) also rates the transcript.

Record = the harness's record (records.py; tokens summed over the requests, latency_s = the episode's wall
time) plus: category, steps, tool_calls, tool_names, requests
(finish_reason, tokens, latency of each request), end / end_reason / end_detail (how the episode ended:
stop, tool_calls = finish called, max_steps, parse_error, length, error), check (None = passed, else why
not), judge_correct / judge_reason, transcript. `finish_reason` is the LAST request's (stop / length /
error): an episode whose request failed for good is an error record, never scored, and asked again on
resume; everything else is finished. `correct` is the checker's verdict on the final workspace, however
the episode ended; `parsed` is None when it ended on output that could not be acted on (malformed
tool-call XML, an unknown tool, an unclosed thought, length), which stats counts as a parse failure.
Transcripts: `<out dir>/<suite>_transcripts/<task id>.jsonl`, one Trajectory line (the full message
list with reasoning, tool calls and real tool outputs) per attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cardforge.core.chat import Trajectory, append_jsonl
from cardforge.agent import llm_judge
from cardforge.agent.react import Options, run_sample
from cardforge.agent.tasks import Task
from cardforge.agent.teacher import STOP, Teacher
from cardforge.agent.tools import FINISH, Workspace, tool_schemas
from cardforge.eval import records as rec
from cardforge.eval.agentic.task import AgenticTask, run_check
from cardforge.agent.client import Completion, new_session
from cardforge.eval.harness import HarnessOptions

SYSTEM = ("You are an autonomous agent working in a Linux sandbox: the working directory is /work, there is no "
          "network. Solve the task with the tools. Think briefly, then call ONE tool; you will see its result. "
          "Check your work. When the task is done, call finish with a one-line summary.")
UNPARSEABLE = ("parse_error", "unclosed_think", "bad_tool_call", "length")


@dataclass
class AgenticOptions:
    max_steps: int | None = None  # overrides every task's own budget
    tool_timeout_s: float = 10.0
    judge: Teacher | None = None  # the LLM judge (eval.judge_url); None: checkers only
    transcripts: Path | None = None  # default: <out_path dir>/<suite>_transcripts


@dataclass
class _Actor(Teacher):
    """The evaluated model in the teacher's seat; keeps every completion for the record."""

    completions: list[Completion] = field(default_factory=list)

    async def ask(self, session, messages: list[dict], sampling=None) -> Completion:
        c = await super().ask(session, messages, sampling)
        self.completions.append(c)
        return c


def data_task(t: AgenticTask) -> Task:
    return Task(t.id, "agentic", t.prompt, {"type": "none"}, tools=tool_schemas([*t.tools, FINISH]),
                files=dict(t.files), system=t.system or SYSTEM)


def task_hash(t: AgenticTask, max_steps: int) -> str:
    """Everything the model sees or may do: a changed prompt, seed, tool set or budget reruns the task."""
    d = data_task(t)
    blob = json.dumps({"system": d.system, "prompt": d.prompt, "files": d.files, "tools": d.tools,
                       "max_steps": max_steps}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _steps(t: AgenticTask, aopts: AgenticOptions) -> int:
    return int(aopts.max_steps or t.max_steps)


async def run_task(t: AgenticTask, actor: _Actor, session, opts: HarnessOptions, aopts: AgenticOptions, *,
                   label: str, suite: str) -> tuple[dict, Trajectory]:
    """One episode -> (record, transcript). Request failures end the episode as an error record."""
    t0 = time.monotonic()
    steps = _steps(t, aopts)
    ws = Workspace({p: c.encode() for p, c in t.files.items()})
    task = data_task(t)
    traj = await run_sample(task, 0, actor, session, Options("execute", steps, False, aopts.tool_timeout_s),
                            workspace=ws)
    cs = actor.completions
    finish = cs[-1].finish_reason if cs else "error"
    end_reason = traj.extra.get("reason")
    answer = traj.extra.get("answer")
    check: str | None = "not checked: a request failed"
    judge_ok, judge_why = None, None
    if finish != "error":
        check = await asyncio.to_thread(run_check, t, ws.files, answer)
        if aopts.judge is not None:
            judge_ok, judge_why = await llm_judge.judge(aopts.judge, session, task, traj.messages, answer)
    correct = finish != "error" and check is None
    parsed = None if finish == "error" or end_reason in UNPARSEABLE else ("pass" if check is None else "fail")
    calls = [c for m in traj.messages if m.role == "assistant" for c in m.tool_calls]
    record = {
        "id": t.id, "suite": suite, "model": label, "model_id": opts.model_id, "prompt_hash": task_hash(t, steps),
        "sampling_hash": opts.sampling_hash, "reasoning": "", "answer": answer, "parsed": parsed,
        "gold": "checker", "correct": correct, "finish_reason": finish,
        "prompt_tokens": _sum(c.prompt_tokens for c in cs), "completion_tokens": _sum(c.completion_tokens for c in cs),
        "latency_s": time.monotonic() - t0, "ttft_s": cs[0].ttft_s if cs else None,
        "error": cs[-1].error if cs and finish == "error" else None,
        "attempts": sum(c.attempts for c in cs), "attempt_errors": [e for c in cs for e in c.errors], "timings": None,
        "category": t.category, "steps": traj.extra.get("steps", 0), "max_steps": steps,
        "tool_calls": len(calls), "tool_names": [c.name for c in calls],
        "requests": [{"finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens,
                      "latency_s": c.latency_s, "attempts": c.attempts, "error": c.error} for c in cs],
        "end": traj.finish_reason, "end_reason": end_reason, "end_detail": traj.verdict.reason if end_reason else None,
        "check": check, "judge_correct": judge_ok, "judge_reason": judge_why,
        "tool_s": traj.timings.tools_s,
    }
    traj.extra.update({"label": label, "suite": suite, "correct": correct, "check": check,
                       "judge_correct": judge_ok, "judge_reason": judge_why, "files_after": sorted(ws.files)})
    return record, traj


def _sum(values) -> int | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def _error_record(t: AgenticTask, opts: HarnessOptions, aopts: AgenticOptions, label: str, suite: str,
                  err: Exception) -> dict:
    """A bug or a sandbox failure inside one task: recorded like a failed request, the run goes on."""
    return {"id": t.id, "suite": suite, "model": label, "model_id": opts.model_id,
            "prompt_hash": task_hash(t, _steps(t, aopts)),
            "sampling_hash": opts.sampling_hash, "answer": None, "parsed": None, "gold": "checker", "correct": False,
            "finish_reason": "error", "error": f"{type(err).__name__}: {err}"[:300], "category": t.category,
            "steps": 0, "tool_calls": 0, "check": "not checked: the runner failed"}


async def _run(tasks: list[AgenticTask], base_url: str, opts: HarnessOptions, aopts: AgenticOptions, out: Path,
               label: str, suite: str) -> None:
    hashes = {t.id: task_hash(t, _steps(t, aopts)) for t in tasks}
    prior = rec.current_by_id(out, hashes, opts.sampling_hash, opts.model_id)  # this model's records only
    done = {tid for tid, r in prior.items() if r.get("finish_reason") in rec.FINISHED}
    todo = [t for t in tasks if t.id not in done]
    state = {"answered": len(done), "correct": sum(1 for i in done if prior[i].get("correct")), "errors": 0}
    bar = tqdm(total=len(tasks), initial=len(done), desc=f"{label}/{suite}", disable=not opts.progress,
               file=sys.stderr, dynamic_ncols=True)
    transcripts = aopts.transcripts or out.parent / f"{suite}_transcripts"
    # stop at </tool_call> (one call per step) and <tool_response> (never invent an observation), as the teacher
    base = _Actor(base_url, opts.model, replace(opts.sampling, stop=STOP), opts.timeout_s, opts.retries,
                  opts.concurrency, label=label)
    sem = asyncio.Semaphore(max(1, opts.concurrency))

    async with new_session(opts.concurrency + (1 if aopts.judge else 0), idle_timeout_s=opts.idle_timeout_s) as session:
        async def one(t: AgenticTask) -> None:
            async with sem:
                try:
                    r, traj = await run_task(t, replace(base, completions=[]), session, opts, aopts,
                                             label=label, suite=suite)
                    r["transcript"] = str(Path(transcripts.name) / f"{t.id}.jsonl")
                    append_jsonl(transcripts / f"{t.id}.jsonl", traj)
                except Exception as e:  # noqa: BLE001 - one task's failure never stops the others
                    r = _error_record(t, opts, aopts, label, suite, e)
            rec.append_record(out, r)  # the event loop is the only writer
            state["answered"] += 1
            state["correct"] += int(r["correct"])
            state["errors"] += int(r["finish_reason"] == "error")
            bar.update(1)
            bar.set_postfix(acc=f"{state['correct'] / state['answered']:.3f}", err=state["errors"])

        await asyncio.gather(*(one(t) for t in todo))
    bar.close()


def run_tasks(tasks: list[AgenticTask], base_url: str, opts: HarnessOptions, out_path: str | Path, *,
              label: str = "model", suite: str = "agentic", aopts: AgenticOptions | None = None) -> list[dict]:
    """Run every unfinished task; return the latest record of each task, in task order."""
    from cardforge.core.sandbox import check_available

    check_available()  # no sandbox: say so once, not as 22 error records
    out = Path(out_path)
    aopts = aopts or AgenticOptions()
    asyncio.run(_run(tasks, base_url, opts, aopts, out, label, suite))
    latest = rec.current_by_id(out, {t.id: task_hash(t, _steps(t, aopts)) for t in tasks}, opts.sampling_hash,
                               opts.model_id)
    return [latest[t.id] for t in tasks if t.id in latest]
