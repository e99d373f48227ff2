"""The pipeline's record of a finished stage (`Outputs(cfg).pipeline_record(stage)`: key, fingerprint, result,
run id, outputs' hashes): written by cardforge.pipeline.run, read back by it (skip what is done) and by the
card (which earlier run a skipped stage's results come from). Here in core so the card reads it without
importing the pipeline, which sits above every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from cardforge.core.artifacts import Outputs


def record_path(cfg: DictConfig, stage: str) -> Path:
    return Outputs(cfg).pipeline_record(stage)


def load_record(cfg: DictConfig, stage: str) -> dict | None:
    p = record_path(cfg, stage)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
