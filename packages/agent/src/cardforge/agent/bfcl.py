"""BFCL function-calling items as teacher tasks, judged by an AST match against the possible answers.

Reads the BFCL v4 file layout (the `bfcl-eval` package's data folder, or any copy of it):
  FILE                              one question a line: {"id", "question": [[{"role", "content"}...]],
                                    "function": [{"name", "description", "parameters": {"type": "dict", ...}}]}
  dirname(FILE)/possible_answer/NAME  {"id", "ground_truth": [{func: {param: [allowed values]}}]}

The teacher is offered the item's functions (BFCL types mapped to JSON schema) instead of our registry; its
first tool call(s) are the answer and are never executed. The match is our own, a subset of BFCL's checker:
names equal, no unknown parameter, every parameter without "" among its allowed values present, each value
equal to an allowed one after BFCL-style normalisation (strings lowercased without spaces and ,./-_*^;
an int matches a float). Parallel items match as an unordered set of calls. Not covered: multi-turn and
irrelevance categories, per-language type coercion (java/javascript).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cardforge.core.chat import ToolCall
from cardforge.core.errors import UserError
from cardforge.agent.tasks import Task

SYSTEM = "You are an expert in composing function calls. Answer the request with the right function call(s)."
_TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "int": "integer",
          "str": "string", "bool": "boolean"}


def to_json_schema(node: Any) -> Any:
    """BFCL's parameter types ("dict", "float", "tuple", "any") -> JSON schema types."""
    if isinstance(node, dict):
        out = {k: to_json_schema(v) for k, v in node.items()}
        t = node.get("type")
        if t == "any":
            out.pop("type")
        elif isinstance(t, str):
            out["type"] = _TYPES.get(t, t)
        return out
    if isinstance(node, list):
        return [to_json_schema(v) for v in node]
    return node


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def package_file(name: str) -> Path:
    """`simple_python` -> the installed bfcl-eval package's data/BFCL_v4_simple_python.json (data only: the
    package is installed --no-deps, its runtime pins would clash with ours)."""
    import importlib.util

    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"data.sources: bfcl:{name} needs the bfcl-eval package (pip install --no-deps bfcl-eval)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    file = data / f"BFCL_v4_{name}.json"
    if not file.is_file():
        names = sorted(p.stem.removeprefix("BFCL_v4_") for p in data.glob("BFCL_v4_*.json"))
        raise UserError(f"data.sources: bfcl:{name} is not a BFCL v4 set; choose one of: {', '.join(names)}")
    return file


def bfcl_tasks(file: str | Path) -> list[Task]:
    """Tasks from a BFCL v4 file path, or a set name of the bfcl-eval package (`simple_python`, `multiple`)."""
    file = Path(file) if ("/" in str(file) or str(file).endswith(".json")) else package_file(str(file))
    answers = file.parent / "possible_answer" / file.name
    if not file.is_file() or not answers.is_file():
        raise UserError(f"data.sources: bfcl:{file} needs the question file and {answers} (BFCL v4 layout)")
    truth = {a["id"]: a["ground_truth"] for a in _read_lines(answers)}
    tasks = []
    for q in _read_lines(file):
        if q["id"] not in truth:
            continue  # no possible answer, nothing to judge by
        turns = q["question"][0] if q["question"] and isinstance(q["question"][0], list) else q["question"]
        prompt = "\n".join(m["content"] for m in turns if m.get("role") == "user")
        tools = [{"type": "function", "function": to_json_schema(f)} for f in q["function"]]
        tasks.append(Task(f"bfcl/{q['id']}", "bfcl", prompt, {"type": "bfcl", "ground_truth": truth[q["id"]]},
                          tools=tools, system=SYSTEM, answer_by_call=True))
    return tasks


def _norm(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        return re.sub(r"[ ,./\-_*^]", "", v).lower().replace("'", '"')
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def match_call(call: ToolCall, expected: dict[str, dict[str, list]]) -> str | None:
    """None if `call` matches the one-function ground truth `expected`, else why not."""
    (name, params), = expected.items()
    if call.name != name:
        return f"called {call.name!r}, expected {name!r}"
    for k in call.arguments:
        if k not in params:
            return f"{name}: unexpected parameter {k!r}"
    for k, allowed in params.items():
        if k not in call.arguments:
            if "" not in allowed:
                return f"{name}: missing parameter {k!r}"
            continue
        if _norm(call.arguments[k]) not in [_norm(a) for a in allowed if a != ""]:
            return f"{name}: {k}={call.arguments[k]!r} is not one of {allowed!r}"
    return None


def match_calls(calls: list[ToolCall], ground_truth: list[dict]) -> str | None:
    """Unordered match of all calls against all ground-truth entries (backtracking; items are small)."""
    if len(calls) != len(ground_truth):
        return f"{len(calls)} call(s), expected {len(ground_truth)}"
    first_problem: list[str] = []

    def assign(i: int, free: list[int]) -> bool:
        if i == len(calls):
            return True
        for j in free:
            why = match_call(calls[i], ground_truth[j])
            if why is None and assign(i + 1, [f for f in free if f != j]):
                return True
            if why and not first_problem:
                first_problem.append(why)
        return False

    return None if assign(0, list(range(len(ground_truth)))) else (first_problem or ["no matching assignment"])[0]
