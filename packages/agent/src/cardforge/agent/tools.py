"""The tool registry the teacher sees, and the two ways a call gets its result.

Tools (OpenAI function schemas, stored with every trajectory as `tools`):
  python(code)              run Python 3 in the task's sandboxed workspace
  shell(command)            run a bash command there
  read_file(path)           a file of the workspace
  write_file(path, content) create or replace a file of the workspace
  finish(answer)            end the task with this answer (never executed or simulated)

`execute`: python/shell run in `cardforge.core.sandbox.run_sandboxed`; each call gets a fresh sandbox
seeded with the task's `Workspace` and the files it leaves are carried into the next call of the same
task (so "write then run" works). read/write act on the Workspace directly: no process needed. Every
observation is escaped (`core.sandbox.text.observation`: control characters, and chat markup such as
`</tool_response>` or `<|im_end|>` loses its `<`), so what a file or program holds cannot forge a turn.
`simulate` (card v1): a model role-plays the runtime and improvises the output (see `simulate_prompt`).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

from cardforge.core.chat import ToolCall

MAX_OBSERVATION = 2000  # chars of a tool result shown to the teacher (and trained on as context)
FINISH = "finish"


def _fn(name: str, description: str, **params: str) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {k: {"type": "string", "description": v}
                                                        for k, v in params.items()},
                       "required": list(params)}}}


TOOLS: dict[str, dict] = {
    "python": _fn("python", "Run a Python 3 program and return its stdout, stderr and exit code.",
                  code="the complete program; print what you need to see"),
    "shell": _fn("shell", "Run a bash command in the task's working directory and return its output.",
                 command="the command line"),
    "read_file": _fn("read_file", "Return the content of a file in the working directory.",
                     path="relative path"),
    "write_file": _fn("write_file", "Create or replace a file in the working directory.",
                      path="relative path", content="the whole new content"),
    FINISH: _fn(FINISH, "End the task and give the final answer.", answer="the final answer"),
}


def tool_schemas(names: list[str] | None = None) -> list[dict]:
    return [TOOLS[n] for n in (names or list(TOOLS))]


class ToolError(ValueError):
    """A call the registry cannot run (unknown tool, missing argument, path outside the workspace)."""


@dataclass
class Workspace:
    """The task's files, carried from one sandboxed call to the next."""

    files: dict[str, bytes] = field(default_factory=dict)

    def path(self, raw: str) -> str:
        p = posixpath.normpath(str(raw).strip().removeprefix("/work/") or ".")  # /work is the sandbox cwd
        if p in (".", "..") or p.startswith("../") or posixpath.isabs(p):
            raise ToolError(f"path {raw!r} is outside the working directory")
        return p


def check_call(call: ToolCall, allowed: list[str]) -> None:
    if call.name not in allowed:
        raise ToolError(f"unknown tool {call.name!r} (available: {', '.join(allowed)})")
    spec = TOOLS.get(call.name)
    if spec:
        missing = [p for p in spec["function"]["parameters"]["required"] if p not in call.arguments]
        if missing:
            raise ToolError(f"{call.name}: missing argument(s) {', '.join(missing)}")


def _cap(text: str) -> str:
    """Escaped (control characters, chat-template markup: core.sandbox.text.observation), then capped: a
    file or a program's output can never forge a turn, a call or the end of a tool response."""
    from cardforge.core.sandbox.text import observation

    text = observation(text)
    return text if len(text) <= MAX_OBSERVATION else text[:MAX_OBSERVATION] + f"\n[... {len(text) - MAX_OBSERVATION} more chars]"


def execute(call: ToolCall, ws: Workspace, timeout_s: float = 10.0) -> str:
    """Run one registry call for real; returns the observation text. Blocking (run it in a thread)."""
    from cardforge.core.sandbox import run_sandboxed

    args = call.arguments
    if call.name == "read_file":
        p = ws.path(args["path"])
        if p not in ws.files:
            return _cap(f"error: no such file: {p}")
        return _cap(ws.files[p].decode("utf-8", "replace"))
    if call.name == "write_file":
        p = ws.path(args["path"])
        ws.files[p] = str(args["content"]).encode()
        return _cap(f"wrote {len(ws.files[p])} bytes to {p}")
    if call.name == "python":
        cmd, stdin = ["python3", "-"], str(args["code"])  # stdin: the program leaves no file behind
    elif call.name == "shell":
        cmd, stdin = ["bash", "-c", str(args["command"])], None
    else:
        raise ToolError(f"{call.name} is not an executable tool")
    r = run_sandboxed(cmd, files=dict(ws.files), timeout_s=timeout_s, stdin=stdin)
    ws.files = dict(r.files)
    parts = [r.stdout.rstrip()] if r.stdout.strip() else []
    if r.stderr.strip():
        parts.append("[stderr]\n" + r.stderr.rstrip())
    parts.append(f"[timed out after {timeout_s:g} s]" if r.timed_out else f"[exit code {r.exit_code}]")
    return _cap("\n".join(parts))


SIMULATOR_SYSTEM = ("You are the runtime of a Linux sandbox with Python 3. You receive one tool call and reply "
                    "with exactly what it would print or return, nothing else: no explanations, no markdown.")


def simulate_prompt(call: ToolCall) -> list[dict]:
    """The role-play request for one call (card v1: the observation is improvised, not run)."""
    return [{"role": "system", "content": SIMULATOR_SYSTEM},
            {"role": "user", "content": f"Tool: {call.name}\nArguments: {json.dumps(call.arguments, ensure_ascii=False)}"
                                        "\nOutput:"}]
