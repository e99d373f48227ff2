"""lora.* and trainer.*: the train stage's schemas.

Values: conf/defaults/trainer.yaml, conf/trainer/*.yaml, conf/lora/*.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

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
    _target_: str = MISSING
    r: int = MISSING
    lora_alpha: int = MISSING
    lora_dropout: float = MISSING
    target_modules: list[str] = MISSING
    bias: str = MISSING
    task_type: str = MISSING


@dataclass
class TrainerConfig:
    optimizer: Optimizer = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    scheduler: Scheduler = MISSING
    warmup_ratio: float = MISSING
    max_epochs: int = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    precision: str = MISSING
    accelerator: str = MISSING
    gradient_checkpointing: bool = MISSING
    seed: int = MISSING
    log_every_n_steps: int = MISSING
    val_check_interval: float = MISSING
    strategy: str = MISSING
    devices: Any = MISSING
    num_nodes: int = MISSING
    ckpt_every_n_steps: int = MISSING
    data_file: Optional[str] = MISSING
    skip_bad_lines: bool = MISSING
    kernels: str = MISSING
    compile_gdn: bool = MISSING
    no_recompute_layers: int = MISSING
    compile_layers: bool = MISSING
    pad_to_multiple_of: Optional[int] = MISSING
    tf32: bool = MISSING
    activation_memory_budget: Optional[float] = MISSING
    pack_length: Optional[int] = MISSING
    offload_checkpoints: bool = MISSING
    gdn_core_groups: int = MISSING
    flat_optimizer: bool = MISSING

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
        if self.offload_checkpoints and (self.kernels != "cardforge" or not (
                self.gradient_checkpointing or self.activation_memory_budget is not None)):
            raise ValueError("trainer.offload_checkpoints needs trainer.kernels=cardforge and "
                             "trainer.gradient_checkpointing=true (or trainer.activation_memory_budget, which then "
                             "applies to each layer's recompute)")
        if self.gdn_core_groups < 0:
            raise ValueError(f"trainer.gdn_core_groups must be >= 0 (0: off), got {self.gdn_core_groups}")
        if self.gdn_core_groups and self.kernels != "cardforge":
            raise ValueError("trainer.gdn_core_groups needs trainer.kernels=cardforge (it recomputes cardforge's "
                             "Gated DeltaNet core)")
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
