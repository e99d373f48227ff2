"""Chain the stages under one MLflow parent run; stop with a clear message at the first missing stage.

Stages are looked up lazily (`module:function`) so a package that is not installed, or a stage that is
not built yet, stops the chain there with what was done so far, instead of failing at import.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import mlflow
from omegaconf import DictConfig

from cardforge.core import tracking
from cardforge.core.cli import StageNotImplemented

# (stage, "module:function", issue that builds it). The functions take the full config.
STAGES: list[tuple[str, str, int]] = [
    ("models", "cardforge.core.models.stage:run", 2),
    ("data", "cardforge.data.stage:run", 3),
    ("train", "cardforge.train.stage:run", 4),
    ("merge", "cardforge.train.merge.stage:run", 4),
    ("quant", "cardforge.quant.stage:run", 5),
    ("eval", "cardforge.eval.stage:run", 7),
    ("card", "cardforge.card.stage:run", 9),
]


@dataclass
class PipelineResult:
    run_id: str
    done: list[str] = field(default_factory=list)
    stopped_at: str | None = None
    reason: str | None = None
    results: dict[str, Any] = field(default_factory=dict)


def resolve_stage(target: str) -> Callable[[DictConfig], Any] | None:
    module, _, fn = target.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):  # the stage module itself is missing, not a dependency
            return None
        raise
    except AttributeError:
        return None


def run(cfg: DictConfig) -> PipelineResult:
    with tracking.pipeline_run(cfg) as parent:
        result = PipelineResult(run_id=parent.info.run_id)
        for stage, target, issue in STAGES:
            fn = resolve_stage(target)
            if fn is None:
                result.stopped_at, result.reason = stage, f"stage '{stage}' is not implemented yet (issue #{issue})"
                break
            print(f"[pipeline] stage {stage} ...", file=sys.stderr)
            try:
                result.results[stage] = fn(cfg)
            except StageNotImplemented as e:
                result.stopped_at, result.reason = stage, e.message
                break
            result.done.append(stage)
        mlflow.set_tags(
            {"cardforge.stages_done": ",".join(result.done), "cardforge.stopped_at": result.stopped_at or ""}
        )
    return result
