"""Rule-based verifiers: did this trajectory really solve its task? (the judge of rejection sampling)

`verify(task, answer, calls, workspace)` -> `Check(ok, detail)`; ok is None when the task cannot be
checked this way (no verifier, or a file check without a real workspace under tool_results=simulate).
Blocking (HumanEval runs the tests in the sandbox): call it from a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cardforge.core.chat import ToolCall
from cardforge.agent.tasks import Task
from cardforge.agent.tools import Workspace

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_INTEGER = re.compile(r"-?\d+")


@dataclass
class Check:
    ok: bool | None
    detail: str = ""


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def _humaneval(v: dict, answer: str, timeout_s: float) -> Check:
    from cardforge.core.humaneval import check, python_code

    r = check(v, python_code(answer), timeout_s)
    return Check(True, r.detail) if r.passed else Check(False, f"tests failed: {r.detail[:200]}")


def verify(task: Task, answer: str | None, calls: list[ToolCall], ws: Workspace | None,
           timeout_s: float = 10.0) -> Check:
    v, kind = task.verifier, task.verifier.get("type", "none")
    if kind == "none":
        return Check(None, "no verifier")
    if kind == "bfcl":
        from cardforge.agent.bfcl import match_calls

        why = match_calls(calls, v["ground_truth"])
        return Check(why is None, why or "calls match a possible answer")
    if kind == "file":
        if ws is None:
            return Check(None, "file check needs tool_results=execute")
        got = ws.files.get(v["path"])
        if got is None:
            return Check(False, f"{v['path']} was not written")
        ok = got.decode("utf-8", "replace").strip() == str(v["content"]).strip()
        return Check(ok, f"{v['path']} {'matches' if ok else 'differs'}")
    if answer is None:
        return Check(False, "no final answer")
    if kind == "word":
        ok = re.search(rf"\b{re.escape(str(v['word']))}\b", answer, re.I) is not None
        return Check(ok, f"answer {'contains' if ok else 'lacks'} {v['word']!r}")
    if kind == "number":
        got = last_number(answer)
        ok = got is not None and abs(got - float(v["value"])) < 1e-9
        return Check(ok, f"last number {got} vs {v['value']}")
    if kind == "integer":  # exact at any size (a float would round a 24-digit product)
        found = _INTEGER.findall(answer.replace(",", ""))
        ok = bool(found) and int(found[-1]) == int(v["value"])
        return Check(ok, f"last integer {found[-1] if found else None} vs {v['value']}")
    if kind == "exact":
        ok = answer.strip().lower() == str(v["answer"]).strip().lower()
        return Check(ok, "exact match" if ok else f"expected {v['answer']!r}")
    if kind == "humaneval":
        return _humaneval(v, answer, timeout_s)
    return Check(None, f"unknown verifier type {kind!r}")
