"""mtp.*: the MTP head retraining stage's schema (values: conf/defaults/mtp.yaml, conf/mtp/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from cardforge.core.config.schemas.checks import check_choice, check_sources
from cardforge.core.config.schemas.quant import GgufTier


@dataclass
class MtpTrainConfig:
    """Retrain the MTP draft head on the distilled model's own continuations (python -m cardforge.train.mtp)."""

    enabled: bool = MISSING
    sources: list[str] = MISSING
    num_prompts: int = MISSING
    heldout_fraction: float = MISSING
    max_new_tokens: int = MISSING
    samples_per_prompt: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    steps: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    unroll: int = MISSING
    step_weights: list[float] = MISSING
    positions_per_step: int = MISSING
    n_max: int = MISSING
    seed: int = MISSING
    dtype: str = MISSING
    device: str = MISSING
    bench: bool = MISSING
    bench_tier: str = MISSING
    bench_n_max: list[int] = MISSING
    bench_repeats: int = MISSING
    bench_max_tokens: int = MISSING

    def __post_init__(self) -> None:
        if self.unroll < 1:
            raise ValueError(f"mtp.unroll must be >= 1, got {self.unroll}")
        if len(self.step_weights) < self.unroll:
            raise ValueError(f"mtp.step_weights needs {self.unroll} weights (mtp.unroll={self.unroll}), "
                             f"got {list(self.step_weights)}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"mtp.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        check_choice("mtp.bench_tier", self.bench_tier, GgufTier, "GGUF tier")
        check_sources("mtp.sources", self.sources)
