"""One agentic task: a prompt, the files seeded into its sandbox workspace, the tools it may use, a step
budget, and a checker of the FINAL workspace (never of what the model says it did).

A checker takes the workspace's files ({relative path: bytes}) and raises `Fail(reason)` when the task is
not done; it computes what it expects from the task's own seed constants, so editing the input files
cannot make a wrong answer pass. Checkers that must run something (a fixed script, hidden tests) run it
in the bubblewrap sandbox on a fresh copy of the files.
Workspaces carry regular files only (an empty directory or a chmod does not survive a tool call), so
tasks ask for files, never for bare directories or modes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_TOOLS = ("shell", "python", "read_file", "write_file")


class Fail(Exception):
    """The workspace does not show the task done; the message says what is wrong."""


Checker = Callable[[dict[str, bytes]], None]


@dataclass(frozen=True)
class AgenticTask:
    id: str
    category: str  # files | shell | python | data
    prompt: str
    check: Checker
    files: dict[str, str] = field(default_factory=dict)  # seeded into the workspace
    tools: tuple[str, ...] = DEFAULT_TOOLS  # `finish` is always offered as well
    max_steps: int = 10  # model turns; eval.agentic_max_steps overrides every task's
    system: str | None = None  # the system prompt; None: the runner's SYSTEM
    # tasks whose result is a value (the proof suite): raises Fail unless the final answer is right
    answer_check: Callable[[str | None], None] | None = None


def run_check(task: AgenticTask, files: dict[str, bytes], answer: str | None = None) -> str | None:
    """None when the checker accepts `files` (and `task.answer_check` the final answer), else why not (a
    checker crash is a failure, never a pass)."""
    try:
        task.check(files)
        if task.answer_check is not None:
            task.answer_check(answer)
    except Fail as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - e.g. undecodable output the checker did not foresee
        return f"checker error: {type(e).__name__}: {e}"[:300]
    return None


# --- helpers for checkers ---

def text(files: dict[str, bytes], path: str) -> str:
    if path not in files:
        raise Fail(f"{path} does not exist")
    return files[path].decode("utf-8", "replace")


def nonblank_lines(files: dict[str, bytes], path: str) -> list[str]:
    return [line.strip() for line in text(files, path).splitlines() if line.strip()]


def load_json(files: dict[str, bytes], path: str) -> Any:
    try:
        return json.loads(text(files, path))
    except json.JSONDecodeError as e:
        raise Fail(f"{path} is not valid JSON ({e})") from None


def short(value: Any, n: int = 120) -> str:
    s = repr(value)
    return s if len(s) <= n else s[:n] + "..."


def expect(ok: bool, why: str) -> None:
    if not ok:
        raise Fail(why)


def expect_equal(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise Fail(f"{what}: got {short(got)}, expected {short(want)}")


def under(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {p: b for p, b in files.items() if p.startswith(prefix)}


def unchanged(files: dict[str, bytes], seed: dict[str, str], paths: list[str]) -> None:
    for p in paths:
        expect_equal(text(files, p), seed[p], f"{p} must stay unchanged")


def sandboxed(files: dict[str, str | bytes], command: str, timeout_s: float = 10.0):
    """Run a bash command in a fresh sandbox seeded with `files` (the checker's own copy)."""
    from cardforge.core.sandbox import run_sandboxed

    return run_sandboxed(["bash", "-c", command], files=files, timeout_s=timeout_s)
