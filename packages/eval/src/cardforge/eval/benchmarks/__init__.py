"""Benchmarks: one small module each; a lazy registry so a suite's dependencies load only when used.

A benchmark module exposes `load(eval_cfg, root) -> list[Question]` and `parse(answer) -> str | None`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY = {
    "gpqa_diamond": "cardforge.eval.benchmarks.gpqa",
    "mmlu": "cardforge.eval.benchmarks.mmlu",
}
PLANNED = {"coding": 8, "agentic": 8}  # suite -> the issue that adds it


def get(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise KeyError(f"eval.suites: unknown suite {name!r}; known: {sorted(REGISTRY)}")
    return importlib.import_module(REGISTRY[name])
