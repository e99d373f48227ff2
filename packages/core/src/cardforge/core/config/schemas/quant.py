"""quant.*: the quant stage's schema (values: conf/defaults/quant.yaml, conf/quant/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING


class GgufTier(str, Enum):
    BF16 = "BF16"
    Q8_0 = "Q8_0"
    Q6_K = "Q6_K"
    Q5_K_M = "Q5_K_M"
    Q4_K_M = "Q4_K_M"
    Q5_0 = "Q5_0"
    Q4_0 = "Q4_0"


class NvFp4Tier(str, Enum):
    w4a16 = "w4a16"  # MLP weights only
    w4a4 = "w4a4"  # MLP + attention + GDN projections, activations too (calibrated input scales)


class QuantFormat(str, Enum):
    gguf = "gguf"
    fp8 = "fp8"
    nvfp4 = "nvfp4"


@dataclass
class GgufTierConfig:
    tier: GgufTier = MISSING
    imatrix: bool = MISSING


@dataclass
class QuantConfig:
    gguf_tiers: list[GgufTierConfig] = MISSING
    imatrix_chunks: int = MISSING
    imatrix_ctx: int = MISSING
    fp8: bool = MISSING
    fp8_block: int = MISSING
    nvfp4: list[NvFp4Tier] = MISSING
    keep_mtp: bool = MISSING
    source: Optional[str] = MISSING
    calibration: Optional[str] = MISSING
    heldout_fraction: float = MISSING
    kld_chunks: int = MISSING
    calib_samples: int = MISSING
    compare_no_imatrix: bool = MISSING
    threads: int = MISSING
    load_check: bool = MISSING
    base_tiers: list[GgufTierConfig] = MISSING
