"""quant.*: the quant stage's schema (values: conf/defaults/quant.yaml, conf/quant/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    imatrix: bool = True


@dataclass
class QuantConfig:
    gguf_tiers: list[GgufTierConfig] = field(
        default_factory=lambda: [
            GgufTierConfig(GgufTier.Q4_K_M, True),
            GgufTierConfig(GgufTier.Q5_K_M, True),
            GgufTierConfig(GgufTier.Q6_K, True),
            GgufTierConfig(GgufTier.Q8_0, False),
        ]
    )
    imatrix_chunks: int = 32
    imatrix_ctx: int = 512
    fp8: bool = True  # e4m3, block 128x128, dynamic activations
    fp8_block: int = 128
    nvfp4: list[NvFp4Tier] = field(default_factory=lambda: [NvFp4Tier.w4a16, NvFp4Tier.w4a4])
    keep_mtp: bool = True
    source: Optional[str] = None  # HF checkpoint dir to quantize; null = the merge stage's output
    calibration: Optional[str] = None  # .txt or trajectories .jsonl; null = the data stage's accepted set + its rejected set (rejections.jsonl)
    heldout_fraction: float = 0.1  # tail of the calibration text kept out of imatrix, for KLD/perplexity
    kld_chunks: int = 16  # held-out chunks (of imatrix_ctx tokens) for KLD/perplexity per tier
    calib_samples: int = 32  # calibration texts run through the model for NVFP4 W4A4 input scales
    compare_no_imatrix: bool = True  # also build Q4_K_M without imatrix and measure it side by side
    threads: int = 0  # 0 = all cores
    load_check: bool = True  # start llama-server on each GGUF and ask one question
    # The base model at these tiers, with the distilled model's imatrix: the card compares distill vs base
    # at the same quant ("same Q4_K_M, same imatrix, same MTP"), so the eval stage serves these.
    base_tiers: list[GgufTierConfig] = field(default_factory=lambda: [GgufTierConfig(GgufTier.Q4_K_M, True)])
