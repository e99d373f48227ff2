"""model.*: the base checkpoint (values: conf/model/*.yaml, one per model)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING


class Arch(str, Enum):
    qwen3_5 = "qwen3_5"
    llama = "llama"


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str = MISSING
    arch: Arch = MISSING
    dtype: str = MISSING
    has_mtp: bool = MISSING
    params_b: float = MISSING
    embedded: bool = MISSING
