"""The trajectory record: one teacher run on one task, as one JSONL line (schema_version 1).

Two forms of the same record:
* Python API (`Trajectory.from_dict` / dataclasses): tool-call `arguments` and `tools` are typed
  (dict / list of dicts).
* File form (`Trajectory.to_dict`, one JSON object a line): every key is always present and has one JSON
  type in every row, and the free-form parts (`arguments`, `tools`, `extra`) are JSON *strings*, so
  `datasets.load_dataset("json", data_files=...)` infers one Arrow schema for any mix of rows.

`from_dict` accepts both forms (arguments as dict or JSON string) and raises `TrajectoryError` naming the
record (`where`, e.g. "data.jsonl line 7") and the field path (`messages[3].tool_calls[0].arguments`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")
VERDICTS = ("unjudged", "accepted", "rejected")
# why a run ended: a teacher finish_reason ("stop", "length", ...) or one of ours ("parse_error", "error")
FINISH_REASONS = ("stop", "tool_calls", "length", "parse_error", "max_steps", "error")


class TrajectoryError(ValueError):
    """A record that does not fit the schema; the message names the record and the field."""

    def __init__(self, where: str, path: str, problem: str):
        self.where, self.path, self.problem = where, path, problem
        super().__init__(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # the teacher's call id; not rendered by the template, so not recovered by parsing

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}

    def to_openai(self) -> dict:
        """The transformers / OpenAI message shape the chat template reads (arguments as a mapping)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Message:
    role: str
    content: str = ""
    reasoning_content: str = ""  # assistant only: the thinking rendered inside <think>...</think>
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant only
    tool_call_id: str = ""  # tool only: which call this result answers
    name: str = ""  # tool only: the function that produced the result

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "content": self.content,
            "reasoning_content": self.reasoning_content,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "tool_call_id": self.tool_call_id,
            "name": self.name,
        }

    def to_openai(self) -> dict:
        """The dict `tokenizer.apply_chat_template` takes; keys a role does not use are left out."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant":
            # always a string, even empty: the Qwen3.5 template otherwise splits a content that holds </think>
            out["reasoning_content"] = self.reasoning_content
            if self.tool_calls:
                out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.role == "tool":
            out["tool_call_id"], out["name"] = self.tool_call_id, self.name
        return out


@dataclass
class Verdict:
    status: str = "unjudged"  # unjudged | accepted | rejected
    score: float | None = None
    reason: str = ""
    judge: str = ""  # who judged: a model id, "tests", "exact_match", ...

    def to_dict(self) -> dict:
        return {"status": self.status, "score": self.score, "reason": self.reason, "judge": self.judge}


@dataclass
class Timings:
    total_s: float = 0.0
    teacher_s: float = 0.0  # time waiting on the teacher
    tools_s: float = 0.0  # time running (or simulating) tools

    def to_dict(self) -> dict:
        return {"total_s": self.total_s, "teacher_s": self.teacher_s, "tools_s": self.tools_s}


@dataclass
class Trajectory:
    task_id: str
    messages: list[Message]
    source: str = ""  # where the task came from (dataset / benchmark name)
    teacher: str = ""  # the model that produced the assistant turns
    tools: list[dict] = field(default_factory=list)  # JSON schemas offered to the teacher
    verdict: Verdict = field(default_factory=Verdict)
    timings: Timings = field(default_factory=Timings)
    finish_reason: str = "stop"
    errors: list[str] = field(default_factory=list)  # recorded faults (parse errors, truncation, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form; stored as a JSON string
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """The file form: fixed keys, one JSON type per key (see the module docstring)."""
        return {
            "schema_version": self.schema_version,
            "task_id": self.task_id,
            "source": self.source,
            "teacher": self.teacher,
            "finish_reason": self.finish_reason,
            "errors": list(self.errors),
            "verdict": self.verdict.to_dict(),
            "timings": self.timings.to_dict(),
            "tools": json.dumps(self.tools, ensure_ascii=False),
            "extra": json.dumps(self.extra, ensure_ascii=False),
            "messages": [m.to_dict() for m in self.messages],
        }

    def openai_messages(self) -> list[dict]:
        return [m.to_openai() for m in self.messages]

    @classmethod
    def from_dict(cls, d: Any, where: str = "record") -> Trajectory:
        return _Reader(where).trajectory(d)


class _Reader:
    """Validates one record; each check names the field path, so errors point at the exact spot."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, path: str, problem: str):
        raise TrajectoryError(self.where, path, problem)

    def keys(self, d: Any, path: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(d, dict):
            self.fail(path, f"expected an object, got {type(d).__name__}")
        for k in d:
            if k not in allowed:
                self.fail(f"{path}.{k}" if path else k, f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for k in required:
            if k not in d:
                self.fail(f"{path}.{k}" if path else k, "missing")
        return d

    def typed(self, d: dict, key: str, path: str, types, default=None):
        value = d.get(key, default)
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
            names = " or ".join(t.__name__ for t in _tuple(types))
            self.fail(f"{path}{key}", f"expected {names}, got {type(value).__name__} {_short(value)}")
        return value

    def json_value(self, value: Any, path: str, want: type):
        """Accept the typed value or its JSON-string file form."""
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else want()
            except json.JSONDecodeError as e:
                self.fail(path, f"not valid JSON ({e.msg} at char {e.pos})")
        if not isinstance(value, want):
            self.fail(path, f"expected a JSON {'object' if want is dict else 'array'}, got {type(value).__name__}")
        return value

    def trajectory(self, d: Any) -> Trajectory:
        allowed = {"schema_version", "task_id", "source", "teacher", "finish_reason", "errors", "verdict",
                   "timings", "tools", "extra", "messages"}
        d = self.keys(d, "", allowed, {"schema_version", "task_id", "messages"})
        task_id = self.typed(d, "task_id", "", str)
        if not task_id:
            self.fail("task_id", "empty")
        # name the task from here on: a line number alone is hard to act on
        self.where = f"{self.where} (task_id {task_id!r})"
        version = self.typed(d, "schema_version", "", int)
        if version != SCHEMA_VERSION:
            self.fail("schema_version", f"{version} is not supported (this code reads {SCHEMA_VERSION})")
        finish = self.typed(d, "finish_reason", "", str, "stop")
        if finish not in FINISH_REASONS:
            self.fail("finish_reason", f"{finish!r} is not one of {', '.join(FINISH_REASONS)}")
        errors = self.typed(d, "errors", "", list, [])
        for i, e in enumerate(errors):
            if not isinstance(e, str):
                self.fail(f"errors[{i}]", f"expected str, got {type(e).__name__}")
        tools = self.json_value(d.get("tools", []), "tools", list)
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                self.fail(f"tools[{i}]", f"expected a JSON object (a tool schema), got {type(t).__name__}")
        messages = self.typed(d, "messages", "", list)
        if not messages:
            self.fail("messages", "empty")
        return Trajectory(
            task_id=task_id,
            messages=self.messages(messages),
            source=self.typed(d, "source", "", str, ""),
            teacher=self.typed(d, "teacher", "", str, ""),
            tools=tools,
            verdict=self.verdict(d.get("verdict", {})),
            timings=self.timings(d.get("timings", {})),
            finish_reason=finish,
            errors=list(errors),
            extra=self.json_value(d.get("extra", {}), "extra", dict),
            schema_version=version,
        )

    def verdict(self, d: Any) -> Verdict:
        d = self.keys(d, "verdict", {"status", "score", "reason", "judge"})
        status = self.typed(d, "status", "verdict.", str, "unjudged")
        if status not in VERDICTS:
            self.fail("verdict.status", f"{status!r} is not one of {', '.join(VERDICTS)}")
        score = self.typed(d, "score", "verdict.", (int, float, type(None)))
        return Verdict(status, None if score is None else float(score), self.typed(d, "reason", "verdict.", str, ""),
                       self.typed(d, "judge", "verdict.", str, ""))

    def timings(self, d: Any) -> Timings:
        d = self.keys(d, "timings", {"total_s", "teacher_s", "tools_s"})
        vals = {k: float(self.typed(d, k, "timings.", (int, float), 0.0)) for k in ("total_s", "teacher_s", "tools_s")}
        for k, v in vals.items():
            if v < 0:
                self.fail(f"timings.{k}", f"negative ({v})")
        return Timings(**vals)

    def messages(self, raw: list) -> list[Message]:
        out: list[Message] = []
        open_calls: set[str] | None = None  # ids of the latest assistant's calls, while tool results may follow
        for i, m in enumerate(raw):
            p = f"messages[{i}]"
            m = self.keys(m, p, {"role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name"},
                          {"role"})
            role = self.typed(m, "role", f"{p}.", str)
            if role not in ROLES:
                self.fail(f"{p}.role", f"{role!r} is not one of {', '.join(ROLES)}")
            if role == "system" and i != 0:
                self.fail(f"{p}.role", "only the first message may be a system message")
            content = m.get("content") or ""  # OpenAI sends null content next to tool calls
            if not isinstance(content, str):
                self.fail(f"{p}.content", f"expected str, got {type(content).__name__}")
            reasoning = m.get("reasoning_content") or ""
            if not isinstance(reasoning, str):
                self.fail(f"{p}.reasoning_content", f"expected str, got {type(reasoning).__name__}")
            calls = [self.tool_call(c, f"{p}.tool_calls[{j}]") for j, c in enumerate(m.get("tool_calls") or [])]
            call_id, name = self.typed(m, "tool_call_id", f"{p}.", str, ""), self.typed(m, "name", f"{p}.", str, "")
            if role != "assistant":
                if reasoning:
                    self.fail(f"{p}.reasoning_content", f"only assistant messages carry reasoning, not {role}")
                if calls:
                    self.fail(f"{p}.tool_calls", f"only assistant messages carry tool calls, not {role}")
            if role != "tool" and call_id:
                self.fail(f"{p}.tool_call_id", f"only tool messages answer a call, not {role}")
            if role == "tool":
                if open_calls is None:
                    self.fail(f"{p}.role", "a tool result must follow an assistant message with tool_calls")
                if call_id and open_calls and call_id not in open_calls:
                    self.fail(f"{p}.tool_call_id", f"{call_id!r} matches no call of the preceding assistant "
                                                   f"message (ids: {', '.join(sorted(open_calls))})")
            elif role == "assistant":
                open_calls = {c.id for c in calls if c.id} if calls else None
            else:
                open_calls = None
            out.append(Message(role, content, reasoning, calls, call_id, name))
        return out

    def tool_call(self, c: Any, p: str) -> ToolCall:
        c = self.keys(c, p, {"id", "name", "arguments", "type", "function"})
        if "function" in c:  # the OpenAI nesting {"type": "function", "function": {"name", "arguments"}}
            fn = self.keys(c["function"], f"{p}.function", {"name", "arguments"}, {"name"})
            name, args, ap = fn["name"], fn.get("arguments", {}), f"{p}.function.arguments"
        else:
            self.keys(c, p, {"id", "name", "arguments", "type"}, {"name"})
            name, args, ap = c["name"], c.get("arguments", {}), f"{p}.arguments"
        if not isinstance(name, str) or not name:
            self.fail(f"{p}.name", f"expected a non-empty str, got {_short(name)}")
        call_id = c.get("id") or ""
        if not isinstance(call_id, str):
            self.fail(f"{p}.id", f"expected str, got {type(call_id).__name__}")
        return ToolCall(name, self.json_value(args, ap, dict), call_id)


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
