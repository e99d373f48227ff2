"""BFCL v4 function calling (the `bfcl-eval` package's data): one request per item, scored by AST match.

The model sees the item's functions the way the data engine shows tools to the teacher (their JSON
schemas in the system prompt, `data.teacher.tools_prompt`) and answers with Qwen3 XML tool calls; its
answer is read by `cardforge.core.chat.parse_assistant` (the parser serve and the data engine use), typed
by the functions' schemas, and matched by `cardforge.agent.bfcl.match_calls` against the shipped possible
answers (names, required / unknown parameters, allowed values after BFCL's normalisation, parallel calls
in any order). Irrelevance sets have no possible answers: correct iff the model calls nothing.
Malformed call markup is a parse failure (wrong), never repaired.

Keys: eval.bfcl_sets (BFCL v4 set names, or a question file path in the BFCL layout), eval.bfcl_limit
(a seeded sample per set; null: all), eval.limit (the suite's total, sets interleaved). Records add
`group` (the set: stats gives accuracy per set), `tool_calls` (the parsed calls) and `match` (why not).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from cardforge.core.chat import parse_assistant
from cardforge.core.errors import UserError
from cardforge.agent.client import Completion
from cardforge.eval.harness import HarnessOptions, Question, run_questions

AST_SETS = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
            "live_parallel", "live_parallel_multiple")
IRRELEVANCE_SETS = ("irrelevance", "live_irrelevance")
ALIASES = {"simple": "simple_python"}  # the BFCL v3 name
SYSTEM_EXTRA = " If none of the functions fits the request, say so and call nothing."


def _data():
    try:
        from cardforge.agent import bfcl
        from cardforge.agent.teacher import tools_prompt
    except ImportError as e:  # pragma: no cover - cardforge-eval depends on cardforge-agent
        raise UserError(f"eval.suites: bfcl reuses the agent runtime (cardforge.agent, packages/agent): {e}") from None
    return bfcl, tools_prompt


def set_name(spec: str) -> str:
    return Path(spec).stem.removeprefix("BFCL_v4_") if spec.endswith(".json") else ALIASES.get(spec, spec)


def _file(spec: str) -> Path:
    bfcl, _ = _data()
    name = set_name(spec)
    if spec.endswith(".json"):
        return Path(spec)
    if name not in AST_SETS + IRRELEVANCE_SETS:
        raise UserError(f"eval.bfcl_sets: {spec!r} is not supported; choose from "
                        f"{', '.join(AST_SETS + IRRELEVANCE_SETS)} "
                        "(multi-turn, memory, web-search and java/javascript sets need BFCL's own executors/types)")
    return bfcl.package_file(name)


def _items(spec: str) -> list[dict]:
    """[{id, prompt, tools, ground_truth (None: irrelevance)}] of one set, in file order."""
    bfcl, _ = _data()
    file = _file(spec)
    if "irrelevance" in set_name(spec):
        out = []
        for line in file.read_text().splitlines():
            if line.strip():
                q = json.loads(line)
                turns = q["question"][0] if q["question"] and isinstance(q["question"][0], list) else q["question"]
                out.append({"id": q["id"], "prompt": "\n".join(m["content"] for m in turns if m.get("role") == "user"),
                            "tools": [{"type": "function", "function": bfcl.to_json_schema(f)} for f in q["function"]],
                            "ground_truth": None})
        return out
    return [{"id": t.id.removeprefix("bfcl/"), "prompt": t.prompt, "tools": t.tools,
             "ground_truth": t.verifier["ground_truth"]} for t in bfcl.bfcl_tasks(file)]


def to_question(item: dict, group: str) -> Question:
    bfcl, tools_prompt = _data()
    messages = [{"role": "system", "content": tools_prompt(bfcl.SYSTEM + SYSTEM_EXTRA, item["tools"])},
                {"role": "user", "content": item["prompt"]}]
    gt = item["ground_truth"]
    return Question(f"{group}/{item['id']}", messages, "no call" if gt is None else json.dumps(gt, sort_keys=True),
                    {"group": group, "tools": item["tools"], "ground_truth": gt})


def load(ev: Any, root: str | Path | None = None) -> list[Question]:
    per_set = []
    for spec in ev.bfcl_sets:
        items = _items(str(spec))
        if ev.get("bfcl_limit") and len(items) > int(ev.bfcl_limit):
            keep = set(random.Random(f"{ev.seed}:{spec}").sample(range(len(items)), int(ev.bfcl_limit)))
            items = [it for i, it in enumerate(items) if i in keep]  # file order kept
        per_set.append([to_question(it, set_name(str(spec))) for it in items])
    # round-robin over the sets, so eval.limit keeps every set in the sample
    qs: list[Question] = []
    for k in range(max(map(len, per_set), default=0)):
        qs += [s[k] for s in per_set if k < len(s)]
    return qs[: ev.limit] if ev.get("limit") else qs


def parse(answer: str) -> str | None:
    """The calls as canonical JSON (None: malformed markup); `score` does the real scoring."""
    p = parse_assistant(answer)
    return None if p.errors else json.dumps([{"name": c.name, "arguments": c.arguments} for c in p.tool_calls])


def score(q: Question, c: Completion) -> dict:
    """parsed / correct / match for one answer (the harness's score hook contract)."""
    bfcl, _ = _data()
    out: dict[str, Any] = {"group": q.meta["group"], "parsed": None, "correct": False, "tool_calls": None}
    if c.finish_reason != "stop":
        out["match"] = f"finish_reason {c.finish_reason}: no answer to score"
        return out
    p = parse_assistant(c.content, q.meta["tools"])
    if p.errors:
        out["match"] = f"unparseable tool call: {p.errors[0]}"
        return out
    calls = [{"name": tc.name, "arguments": tc.arguments} for tc in p.tool_calls]
    gt = q.meta["ground_truth"]
    if gt is None:
        why = f"{len(calls)} call(s) where none fits" if calls else None
    else:
        why = bfcl.match_calls(p.tool_calls, gt)
    out.update(parsed=calls, tool_calls=calls, correct=why is None, match=why or "ok")
    return out


def run_suite(questions: list[Question], base_url: str, opts: HarnessOptions, out_path: str | Path, *, label: str,
              suite: str, cfg: Any = None) -> list[dict]:
    """The harness (streaming, retries, resume, one record per item) with `score` on each answer; several
    calls may answer one item, so generation stops only at <tool_response> (an invented tool result)."""
    opts = replace(opts, sampling=replace(opts.sampling, stop=(*opts.sampling.stop, "<tool_response>")))
    return run_questions(questions, base_url, parse, opts, out_path, label=label, suite=suite, score=score)


def note(ev: Any, n: int) -> str | None:
    if ev.get("bfcl_limit") or ev.get("limit"):
        return f"a sample of {n} BFCL items (eval.bfcl_limit / eval.limit), not the full sets"
    return None
