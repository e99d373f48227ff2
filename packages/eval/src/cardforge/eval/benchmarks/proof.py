"""Proof: the held-out split of the proof task family (issue 19; cardforge.agent.proof_tasks), run by the
agentic runner: the evaluated model acts in the ReAct loop, its python/shell calls really run in the
bubblewrap sandbox, and its final answer must be the exact integer.

Held-out = values no training task uses, half in the trained surface form A and half in form B, a
rephrasing the student never saw (records carry `group`: "form A" / "form B", so the summary splits the
accuracy by form). Keys: eval.proof_tasks (how many; the gate needs >= 100), eval.limit,
eval.agentic_max_steps, eval.agentic_tool_timeout_s, eval.proof_probe.

Invented observations: the runner stops every step at </tool_call> and at <tool_response> (a model must
not write its own observation), so the episode never shows whether the model would. With eval.proof_probe
each task's FIRST step is asked once more without stop strings, and the record's `invented_observation`
says whether the output holds a <tool_response> the model wrote itself (the summary's invented_rate). The
base is not probed (label "base"): that would double its eval time for a number no table uses.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from cardforge.eval.harness import HarnessOptions

MAX_STEPS = 4  # one call, its observation, the answer; spare turns for a retry


def _check_answer(want: int, answer: str | None) -> None:
    """The data stage's own `integer` rule (the judge of rejection sampling) on the final answer."""
    from cardforge.agent.tasks import Task
    from cardforge.agent.verify import verify
    from cardforge.eval.agentic.task import Fail

    check = verify(Task("x", "proof", "", {"type": "integer", "value": str(want)}), answer, [], None)
    if not check.ok:
        raise Fail(check.detail if answer is not None else "no final answer")


def _no_files_check(_files: dict[str, bytes]) -> None:
    return None  # the answer decides (answer_check); the workspace may hold anything


def tasks(n: int) -> list:
    from cardforge.agent.proof_tasks import SYSTEM, TOOLS, proof_split
    from cardforge.eval.agentic.task import AgenticTask

    return [AgenticTask(it.id, it.kind, it.prompt, _no_files_check, files=dict(it.files), tools=TOOLS,
                        max_steps=MAX_STEPS, system=SYSTEM, answer_check=partial(_check_answer, it.answer))
            for it in proof_split("heldout", n)]


def load(ev: Any, root: str | Path | None = None) -> list:
    out = tasks(int(ev.proof_tasks))
    return out[: ev.limit] if ev.limit else out


def _form(task_id: str) -> str:
    return "form " + task_id.rsplit("/", 1)[-1].split("-")[1]  # proof/heldout/mul-B-0004 -> form B


async def _probe_all(questions: list, base_url: str, opts: HarnessOptions) -> dict[str, dict]:
    from cardforge.agent.teacher import tools_prompt
    from cardforge.agent.tools import FINISH, tool_schemas
    from cardforge.agent.client import complete, new_session

    sem = asyncio.Semaphore(max(1, opts.concurrency))
    sampling = replace(opts.sampling, stop=())
    out: dict[str, dict] = {}
    async with new_session(opts.concurrency, idle_timeout_s=opts.idle_timeout_s) as session:
        async def one(t) -> None:
            wire = [{"role": "system", "content": tools_prompt(t.system, tool_schemas([*t.tools, FINISH]))},
                    {"role": "user", "content": t.prompt}]
            async with sem:
                c = await complete(session, base_url, wire, sampling, timeout_s=opts.timeout_s,
                                   retries=opts.retries, model=opts.model)
            text = c.content or ""
            out[t.id] = {"finish_reason": c.finish_reason, "invented": "<tool_response>" in text
                         if c.finish_reason != "error" else None, "text": text[-400:]}

        await asyncio.gather(*(one(t) for t in questions))
    return out


def probe(questions: list, base_url: str, opts: HarnessOptions, path: Path) -> dict[str, dict]:
    """{task id: {invented, finish_reason, text}}, cached in `path` per served model and sampling."""
    key = f"{opts.model_id}|{opts.sampling_hash}"
    cache: dict[str, Any] = {}
    if path.is_file():
        cache = json.loads(path.read_text())
    known = cache.get(key, {})
    todo = [t for t in questions if t.id not in known or known[t.id].get("finish_reason") == "error"]
    if todo:
        known.update(asyncio.run(_probe_all(todo, base_url, opts)))
        from cardforge.core.io import atomic_write_json

        atomic_write_json(path, {**cache, key: known})
    return known


def run_suite(questions: list, base_url: str, opts: HarnessOptions, out_path: str | Path, *, label: str,
              suite: str, cfg: Any) -> list[dict]:
    from cardforge.eval.agentic.runner import AgenticOptions, run_tasks

    ev = cfg.eval
    aopts = AgenticOptions(max_steps=ev.agentic_max_steps,
                           tool_timeout_s=float(ev.agentic_tool_timeout_s))
    records = run_tasks(questions, base_url, opts, out_path, label=label, suite=suite, aopts=aopts)
    # the probe is for the trained models (the method table); the base's cost would double its eval time
    probes = probe(questions, base_url, opts, Path(out_path).with_name(f"{suite}_probe.json")) \
        if ev.proof_probe and label != "base" else {}
    for r in records:
        r["group"] = _form(r["id"])
        p = probes.get(r["id"])
        r["invented_observation"] = p.get("invented") if p else None
    return records


def note(ev: Any, n: int) -> str | None:
    if n < 100:
        return f"{n} held-out tasks: fewer than the 100 the issue-19 gate asks for (eval.proof_tasks)"
    return None
