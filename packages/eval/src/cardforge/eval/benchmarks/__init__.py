"""Benchmarks: one small module each; a lazy registry so a suite's dependencies load only when used.

A benchmark module exposes `load(eval_cfg, root) -> list[Question]` and `parse(answer) -> str | None`;
optionally `score(question, completion) -> dict` (extra record fields incl. parsed/correct: coding runs the
answer's code in the sandbox) or `run_suite(questions, base_url, opts, out_path, *, label, suite, cfg)`
(multi-turn suites that drive the conversation themselves; same record format, resumable).
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY = {
    "gpqa_diamond": "cardforge.eval.benchmarks.gpqa",
    "mmlu": "cardforge.eval.benchmarks.mmlu",
    "humaneval": "cardforge.eval.benchmarks.humaneval",
    "coding": "cardforge.eval.benchmarks.coding",
    "bfcl": "cardforge.eval.benchmarks.bfcl",
    "agentic": "cardforge.eval.benchmarks.agentic",
    "proof": "cardforge.eval.benchmarks.proof",
}


def get(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise KeyError(f"eval.suites: unknown suite {name!r}; known: {sorted(REGISTRY)}")
    return importlib.import_module(REGISTRY[name])
