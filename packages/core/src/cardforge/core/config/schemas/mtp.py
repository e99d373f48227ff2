"""mtp.*: the MTP head retraining stage's schema (values: conf/defaults/mtp.yaml, conf/mtp/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cardforge.core.config.schemas.checks import check_choice, check_sources
from cardforge.core.config.schemas.quant import GgufTier


@dataclass
class MtpTrainConfig:
    """Retrain the MTP draft head on the distilled model's own continuations (python -m cardforge.train.mtp)."""

    enabled: bool = False  # the pipeline runs the stage and quantizes its checkpoint instead of merge's
    sources: list[str] = field(default_factory=lambda: ["builtin", "humaneval"])  # prompts: data.sources specs
    num_prompts: int = 256  # a seeded sample of the sources' task prompts
    heldout_fraction: float = 0.15  # prompts kept out of training for the offline before/after accept rate
    max_new_tokens: int = 512  # continuation length per prompt
    samples_per_prompt: int = 1  # the first greedy (temperature 0), the others sampled at `temperature`
    temperature: float = 0.7
    top_p: float = 0.95
    steps: int = 2000  # optimizer steps, one sequence each
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    unroll: int = 3  # chained draft steps trained (llama.cpp feeds the head's output back at n-max > 1)
    step_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    positions_per_step: int = 64  # drafts per sequence entering the loss (0: all; the LM head is the cost)
    n_max: int = 3  # offline accept rate at this draft length (the card serves --spec-draft-n-max 3)
    seed: int = 0
    dtype: str = "float32"  # compute dtype of the frozen trunk and the head while training (bfloat16 on GPU)
    device: str = "auto"  # auto: cuda when available
    bench: bool = True  # online: llama-server draft-mtp, grafted vs retrained vs off, side by side
    bench_tier: str = "Q8_0"  # GGUF type both heads are benched at
    bench_n_max: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    bench_repeats: int = 3
    bench_max_tokens: int = 128

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
