"""Agentic: our own multi-step tasks (files, shell, python, data wrangling) that the model performs with
real tools in the sandbox; scored by a checker of the final workspace (cardforge.eval.agentic).

The card's "Agentic SOLO (20 complex tasks)" was judged by the harness author; here every task has a
programmatic checker, and `eval.judge_url` adds an LLM judge's verdict beside it (judge_accuracy).
Keys: eval.agentic_limit (first N tasks), eval.agentic_max_steps (override every task's budget),
eval.agentic_tool_timeout_s, eval.judge_url / eval.judge_model.
Runs on the agent runtime (cardforge.agent, packages/agent): the same tools, sandbox and ReAct loop the
training trajectories come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cardforge.eval.harness import HarnessOptions


def load(ev: Any, root: str | Path | None = None) -> list:
    from cardforge.eval.agentic import TASKS

    tasks = list(TASKS)
    if ev.get("agentic_limit"):
        tasks = tasks[: int(ev.agentic_limit)]
    return tasks[: ev.limit] if ev.get("limit") else tasks


def judge_from(ev: Any):
    """The LLM judge at eval.judge_url (OpenAI-compatible), or None."""
    if not ev.judge_url:
        return None
    from cardforge.agent import llm_judge
    from cardforge.agent.teacher import Teacher

    url = str(ev.judge_url).rstrip("/").removesuffix("/v1")
    return Teacher(url, ev.judge_model, llm_judge.JUDGE_SAMPLING, float(ev.timeout_s), int(ev.retries), 1,
                   label=str(ev.judge_model or "judge"))


def run_suite(questions: list, base_url: str, opts: HarnessOptions, out_path: str | Path, *, label: str,
              suite: str, cfg: Any) -> list[dict]:
    from cardforge.eval.agentic.runner import AgenticOptions, run_tasks

    ev = cfg.eval
    aopts = AgenticOptions(max_steps=ev.agentic_max_steps, tool_timeout_s=float(ev.agentic_tool_timeout_s),
                           judge=judge_from(ev))
    return run_tasks(questions, base_url, opts, out_path, label=label, suite=suite, aopts=aopts)


def note(ev: Any, n: int) -> str | None:
    from cardforge.eval.agentic import TASKS

    if n < len(TASKS):
        return f"{n} of the {len(TASKS)} tasks (eval.agentic_limit / eval.limit): a smoke run, not the full suite"
    return None
