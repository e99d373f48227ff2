"""Pipeline stage `models`: make sure the embedded models the config names are built, and record them.

Logs, per model, its content hash and local path as params and its manifest (per-file sha256) as an
artifact, so every later stage's run can be traced to the exact bytes it started from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
from omegaconf import DictConfig

from cardforge.core import tracking
from cardforge.core.models import EMBEDDED, prepare, read_manifest


def needed(cfg: DictConfig) -> list[str]:
    names = []
    if cfg.model.embedded:
        names.append(cfg.model.name)
    if cfg.teacher.kind.value == "embedded":
        names.append(cfg.teacher.model)
    for name in names:
        if name not in EMBEDDED:
            raise ValueError(f"model.name / teacher.model {name!r} is not an embedded model; choose one of: "
                             + ", ".join(EMBEDDED))
    return list(dict.fromkeys(names))


@dataclass
class ModelsResult:
    paths: dict[str, str] = field(default_factory=dict)  # embedded model name -> its local checkpoint


def run(cfg: DictConfig) -> ModelsResult:
    with tracking.stage_run(cfg, "models"):
        out = ModelsResult()
        for name in needed(cfg):
            path = prepare(name)
            manifest = read_manifest(path)
            mlflow.log_params({f"models.{name}.content_hash": manifest["content_hash"][:16],
                               f"models.{name}.path": str(path)})
            mlflow.log_dict(manifest, f"models/{name}.manifest.json")
            out.paths[name] = str(path)
        return out
