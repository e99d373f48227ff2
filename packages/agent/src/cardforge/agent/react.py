"""One ReAct sample: think one step -> call one tool -> observe -> loop, then judge; never raises for the
teacher's faults, which end the sample with a rejection reason instead.

Two message lists grow side by side: `wire` is what the teacher is sent (tools in the system prompt, its
calls as XML text, results as <tool_response> user turns: every OpenAI-compatible server takes that), and
`messages` is the trajectory in our schema (assistant tool_calls, tool results), rendered for the student
by its own chat template.

Rejection reasons (the manifest's table): teacher_error, length, unclosed_think, parse_error,
bad_tool_call, simulator_error, max_steps, wrong_answer, unverifiable, and the chat contract's codes
(cardforge.core.chat.REASONS, e.g. markup_in_argument) for a finished sample the student's template cannot
carry exactly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from cardforge.core.chat import EncodeError, Message, Timings, Trajectory, Verdict, check_messages, parse_assistant
from cardforge.core.chat.parse import nfc
from cardforge.core.sandbox.text import observation
from cardforge.agent.tasks import Task
from cardforge.agent.teacher import Teacher, call_xml, tools_prompt
from cardforge.agent import llm_judge
from cardforge.agent.tools import FINISH, ToolError, Workspace, check_call, execute, simulate_prompt
from cardforge.agent.verify import verify
from cardforge.agent.client import Sampling

# the Qwen3.5/3.6 special tokens a message may not spell out (the student's tokenizer would read them as such)
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
SIMULATOR_SAMPLING = Sampling(temperature=0.2, top_p=0.95, max_tokens=192, thinking=False)


@dataclass
class Options:
    mode: str  # "execute" | "simulate"
    max_steps: int
    judge: bool  # keep only verified samples (rejection sampling)
    tool_timeout_s: float = 10.0
    llm_judge: Any = None  # a Teacher at data.judge_url: decides what no rule can verify


@dataclass
class _End:
    finish: str
    reason: str | None = None  # None: the teacher finished; the judge decides
    detail: str = ""


def sample_id(task: Task, k: int) -> str:
    return f"{task.id}#{k}"


async def run_sample(task: Task, k: int, teacher: Teacher, session, opts: Options,
                     simulator: Teacher | None = None, sim_session=None, *,
                     workspace: Workspace | None = None) -> Trajectory:
    """`workspace` (execute mode): run in this one instead of a fresh copy of task.files, so the caller can
    check its final state (the eval's agentic suite does)."""
    t0 = time.monotonic()
    timings = Timings()
    # texts stripped as the chat template trims them (Python's and llama.cpp's trim differ on Unicode spaces)
    messages = [Message("system", task.system.strip()), Message("user", task.prompt.strip())]
    wire = [{"role": "system", "content": tools_prompt(task.system, task.tools)},
            {"role": "user", "content": task.prompt}]
    allowed = [t["function"]["name"] for t in task.tools]
    ws = None
    if opts.mode == "execute":
        ws = workspace if workspace is not None else Workspace({p: c.encode() for p, c in task.files.items()})
    errors: list[str] = []
    answer, calls = None, []
    end = _End("max_steps", "max_steps", f"no answer within data.max_steps={opts.max_steps}")
    # the k samples of one task must differ: a fixed seed would make them identical
    seed = teacher.sampling.seed
    sampling = replace(teacher.sampling, seed=seed + 7919 * k) if seed is not None else None
    for step in range(opts.max_steps):
        c = await teacher.ask(session, wire, sampling)
        timings.teacher_s += c.latency_s or 0.0
        errors += c.errors
        if c.finish_reason == "error":
            end = _End("error", "teacher_error", c.error or "request failed")
            break
        parsed = parse_assistant(c.content, task.tools)
        reasoning = c.reasoning or parsed.reasoning
        if c.finish_reason == "length":
            messages.append(Message("assistant", c.content, reasoning))  # kept for inspection in rejections
            end = _End("length", "length", f"hit teacher.max_tokens at step {step}")
            break
        if parsed.errors:
            messages.append(Message("assistant", c.content, reasoning))
            errors += parsed.errors
            unclosed = parsed.errors[0].startswith("missing </think>")
            end = _End("parse_error", "unclosed_think" if unclosed else "parse_error", parsed.errors[0])
            break
        if not parsed.tool_calls:
            if not parsed.content and reasoning:  # all of it was thought: no </think>, or nothing after it
                messages.append(Message("assistant", "", reasoning))
                end = _End("parse_error", "unclosed_think", "the output ended inside the reasoning")
                break
            # tolerant ReAct: an answer without a tool call finishes the task
            messages.append(Message("assistant", parsed.content, reasoning))
            answer, end = parsed.content, _End("stop")
            break
        step_calls = parsed.tool_calls if task.answer_by_call else parsed.tool_calls[:1]
        for j, call in enumerate(step_calls):
            call.id = f"call_{step}_{j}"
        messages.append(Message("assistant", parsed.content, reasoning, step_calls))
        if bad := _contract(messages[-1:]):  # e.g. tool-call markup inside a value: refuse before anything runs
            end = _End("parse_error", bad.reason, str(bad))
            break
        if task.answer_by_call:  # function-calling items: the call is the answer, nothing runs
            calls, end = step_calls, _End("tool_calls")
            break
        call = step_calls[0]
        try:
            check_call(call, allowed)
        except ToolError as e:
            end = _End("parse_error", "bad_tool_call", str(e))
            break
        if call.name == FINISH:
            answer, end = str(call.arguments.get("answer", "")), _End("tool_calls")
            break
        t1 = time.monotonic()
        if ws is not None:
            try:
                obs = await asyncio.to_thread(execute, call, ws, opts.tool_timeout_s)
            except ToolError as e:
                obs = f"error: {e}"
        else:
            sim = await (simulator or teacher).ask(sim_session or session, simulate_prompt(call), SIMULATOR_SAMPLING)
            if sim.finish_reason == "error":
                end = _End("error", "simulator_error", sim.error or "simulator failed")
                break
            obs = sim.content.strip()
        timings.tools_s += time.monotonic() - t1
        # escaped (a no-op on execute's own output): a ToolError's echo of the model's path, or a simulator's
        # text, cannot close the <tool_response> or open a turn either
        obs = observation(obs).strip()  # stripped as the template trims it: the same text in training and render
        messages.append(Message("tool", obs, tool_call_id=call.id, name=call.name))
        wire += [{"role": "assistant", "content": "\n\n".join(p for p in (parsed.content, call_xml(call)) if p)},
                 {"role": "user", "content": f"<tool_response>\n{obs}\n</tool_response>"}]

    if end.reason is None and (bad := _contract(messages)):  # the chat contract cannot carry it: rejected here
        end = _End(end.finish, bad.reason, str(bad))
    verdict, extra = await _judge(task, end, answer, calls, ws, opts, session, messages)
    timings.total_s = time.monotonic() - t0
    extra.update({"task_id": task.id, "sample": k, "tool_results": opts.mode, "answer": answer,
                  "steps": sum(m.role == "assistant" for m in messages)})
    return Trajectory(sample_id(task, k), messages, source=task.source, teacher=teacher.label, tools=task.tools,
                      verdict=verdict, timings=timings, finish_reason=end.finish, errors=errors, extra=extra)


def _contract(messages: list[Message]) -> EncodeError | None:
    """The chat contract's refusal (core.chat.check_messages: special-token text, tool-call markup inside a
    value, think tags in the reasoning, ...), if any: the sample is rejected with the contract's code as its
    reason, so the manifest counts it and the train stage never meets it."""
    try:
        check_messages(nfc([m.to_openai() for m in messages]), SPECIAL_TOKENS)
    except EncodeError as e:
        return e
    return None


async def _judge(task: Task, end: _End, answer, calls, ws, opts: Options, session=None,
                 messages=()) -> tuple[Verdict, dict]:
    if end.reason is not None:
        return Verdict("rejected", 0.0, f"{end.reason}: {end.detail}", "runtime"), {"reason": end.reason}
    check = await asyncio.to_thread(verify, task, answer, calls, ws, opts.tool_timeout_s)
    extra = {"check": check.detail, "verified": check.ok}
    if not opts.judge:  # card v1: no rejection sampling; the check is recorded, not enforced
        return Verdict("accepted", None, check.detail, "none"), {**extra, "reason": None}
    if check.ok:
        return Verdict("accepted", 1.0, check.detail, "rules"), {**extra, "reason": None}
    if check.ok is None and opts.llm_judge is not None:  # no rule applies: the LLM judge decides
        passed, why = await llm_judge.judge(opts.llm_judge, session, task, list(messages), answer)
        extra["llm_judge"] = why
        if passed:
            return Verdict("accepted", 1.0, why, "llm"), {**extra, "reason": None}
        reason = "judge_failed" if passed is False else "judge_unparseable"
        return Verdict("rejected", 0.0, f"{reason}: {why}", "llm"), {**extra, "reason": reason}
    reason = "wrong_answer" if check.ok is False else "unverifiable"
    return Verdict("rejected", 0.0, f"{reason}: {check.detail}", "rules"), {**extra, "reason": reason}
