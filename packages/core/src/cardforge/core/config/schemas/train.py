"""lora.* and trainer.*: the train stage's schemas (values: conf/defaults/trainer.yaml, conf/{lora,trainer}/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from cardforge.core.config.schemas.checks import check_choice


class Optimizer(str, Enum):
    paged_adamw_8bit = "paged_adamw_8bit"  # bitsandbytes, CUDA only; CPU falls back to adamw (logged)
    adamw = "adamw"


class Scheduler(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


# Lightning's Trainer(precision=...) strings (lightning.fabric.connector._PRECISION_INPUT_STR + aliases)
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed",
                        "bf16-true", "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")


@dataclass
class LoraConfig:
    _target_: str = "peft.LoraConfig"
    r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    # attention + MLP + Gated DeltaNet projections (qwen3_5 names); resolved and listed by the train stage
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj",
            "gate_proj", "up_proj", "down_proj",
            "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj",
        ]
    )
    bias: str = "none"
    task_type: str = "CAUSAL_LM"


@dataclass
class TrainerConfig:
    optimizer: Optimizer = Optimizer.paged_adamw_8bit
    lr: float = 2e-4
    weight_decay: float = 0.0
    scheduler: Scheduler = Scheduler.cosine
    warmup_ratio: float = 0.03
    max_epochs: int = 1
    max_steps: int = -1  # -1: run max_epochs
    batch_size: int = 1
    grad_accum: int = 1
    precision: str = "bf16-mixed"  # CPU runs use 32-true
    accelerator: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 42
    log_every_n_steps: int = 1
    val_check_interval: float = 1.0
    # scale-out (Lightning): strategy auto | ddp | fsdp (FSDP2, cardforge.train.distributed) | fsdp1 (Lightning's
    # FSDP1, fp32 base, GPU only) or any Lightning strategy name; devices per node
    strategy: str = "auto"
    devices: Any = "auto"  # "auto", a count, or a list of device indices
    num_nodes: int = 1
    ckpt_every_n_steps: int = 10  # atomic last.ckpt for exact resume after a kill
    # the JSONL the stage trains on (trajectories or pre-tokenized rows); null: <outputs>/data/trajectories.jsonl
    data_file: Optional[str] = None
    skip_bad_lines: bool = True  # a line that is not a valid sample is skipped and counted (file:line); false: refused
    # cardforge: our Gated DeltaNet kernel, LoRA forward and chunked cross-entropy (cardforge.train.fast; same
    # loss and gradients, tested); transformers: transformers' + PEFT's own forward
    kernels: str = "cardforge"
    compile_gdn: bool = False  # kernels=cardforge: the GDN core through torch.compile (~30-45 s once per length)
    no_recompute_layers: int = 0  # with gradient checkpointing: the last N decoder layers keep activations
    # kernels=cardforge: every decoder layer through torch.compile (norms, casts, SwiGLU, dropout, residual adds and
    # the GDN core fused; compiles once per layer kind and padded length, ~45 s each for the 27B on an H200)
    compile_layers: bool = False
    # right-pad batches to a multiple of this; None: with compile_layers, geometric buckets (multiples of 512 up to
    # 4k, then of 1/8 of the next power of two: < 512 pads to 4k, < 25% above, 20 lengths up to 32k), else none
    pad_to_multiple_of: Optional[int] = None
    tf32: bool = False  # CUDA fp32 matmuls on TF32 (under bf16-mixed only the few autocast keeps in fp32)
    # compile_layers: no gradient checkpointing; compile's partitioner keeps this fraction of each layer's
    # activations and recomputes the rest (0.1 at seq 4096 on the 27B: 71 GiB, 2617 tok/s vs 2354 with full
    # recompute; memory grows with the sequence length). None: gradient checkpointing as configured
    activation_memory_budget: Optional[float] = None
    # pack several samples into rows of exactly this many tokens (exact sample boundaries: block-diagonal attention,
    # GDN state and conv1d reset per sample; one compiled shape); None: one sample per row, right-padded
    pack_length: Optional[int] = None
    # checkpointed decoder-layer inputs kept in pinned host memory (long packed rows: 20 GiB at 32k on the 27B)
    offload_checkpoints: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"trainer.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ValueError("set trainer.max_epochs >= 1 or trainer.max_steps >= 1")
        if self.strategy == "fsdp1" and self.accelerator == "cpu":
            raise ValueError("trainer.strategy=fsdp1 needs trainer.accelerator=gpu (use trainer.strategy=fsdp, FSDP2, "
                             "on CPU)")
        if self.ckpt_every_n_steps < 1:
            raise ValueError(f"trainer.ckpt_every_n_steps must be >= 1, got {self.ckpt_every_n_steps}")
        if self.kernels not in ("cardforge", "transformers"):
            raise ValueError(f"trainer.kernels must be cardforge or transformers, got {self.kernels!r}")
        if self.no_recompute_layers < 0:
            raise ValueError(f"trainer.no_recompute_layers must be >= 0, got {self.no_recompute_layers}")
        if self.pack_length is not None and self.pack_length < 1:
            raise ValueError(f"trainer.pack_length must be >= 1 (or null), got {self.pack_length}")
        if self.pack_length is not None and self.kernels != "cardforge":
            raise ValueError("trainer.pack_length needs trainer.kernels=cardforge (transformers' layers would let "
                             "the samples of a row see each other)")
        if self.offload_checkpoints and (self.activation_memory_budget is not None or not self.gradient_checkpointing
                                         or self.kernels != "cardforge"):
            raise ValueError("trainer.offload_checkpoints needs trainer.kernels=cardforge, "
                             "trainer.gradient_checkpointing=true and no trainer.activation_memory_budget")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"trainer.pad_to_multiple_of must be >= 1 (or null), got {self.pad_to_multiple_of}")
        if self.compile_layers and self.kernels != "cardforge":
            raise ValueError("trainer.compile_layers=true needs trainer.kernels=cardforge")
        if self.compile_layers and self.strategy == "fsdp1":
            raise ValueError("trainer.compile_layers=true is not supported with trainer.strategy=fsdp1; "
                             "use trainer.strategy=fsdp (FSDP2)")
        if self.activation_memory_budget is not None:
            if not 0.0 <= self.activation_memory_budget <= 1.0:
                raise ValueError("trainer.activation_memory_budget must be in [0, 1] (or null), got "
                                 f"{self.activation_memory_budget}")
            if not self.compile_layers:
                raise ValueError("trainer.activation_memory_budget needs trainer.compile_layers=true (the budget "
                                 "is applied by torch.compile's partitioner)")
        check_choice("trainer.precision", self.precision, LIGHTNING_PRECISIONS, "Lightning precision")
