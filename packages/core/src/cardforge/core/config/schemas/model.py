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
    name: str = MISSING  # short name used in file names (no slashes)
    path: str = MISSING  # local directory or an HF model id (users with network)
    arch: Arch = Arch.qwen3_5
    dtype: str = "bfloat16"
    has_mtp: bool = True  # the checkpoint carries an `mtp.*` head that must survive merge/quant
    params_b: float = 0.0  # size in billions, for plans and disk estimates
    embedded: bool = False  # built locally by cardforge (no download)
