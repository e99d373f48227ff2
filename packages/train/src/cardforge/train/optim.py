"""Optimizer and LR schedule from `cfg.trainer`.

paged_adamw_8bit (bitsandbytes) needs CUDA; anywhere else we fall back to torch AdamW and say so once in the
log and in the returned name (the stage records it as the MLflow tag `train.optimizer`).
"""

from __future__ import annotations

import logging
import math
from typing import Iterable

import torch

log = logging.getLogger(__name__)


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float,
                    on_cuda: bool) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, the name of what actually runs)."""
    params = [p for p in params if p.requires_grad]
    if name == "paged_adamw_8bit":
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in params):
            # FSDP2 shards the LoRA tensors as DTensors, which bitsandbytes' kernels do not take; the fp32 LoRA
            # state is ~1% of the base, so 8-bit states would save little
            log.warning("trainer.optimizer=paged_adamw_8bit: FSDP2's sharded (DTensor) parameters; using torch AdamW")
        elif on_cuda:
            try:
                import bitsandbytes as bnb

                return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay), "paged_adamw_8bit"
            except ImportError:
                log.warning("trainer.optimizer=paged_adamw_8bit: bitsandbytes is not installed "
                            "(pip install 'cardforge-train[gpu]'); falling back to torch AdamW")
        else:
            log.warning("trainer.optimizer=paged_adamw_8bit needs CUDA; falling back to torch AdamW on this device")
    elif name != "adamw":
        raise ValueError(f"trainer.optimizer: unknown optimizer {name!r}")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay), "adamw"


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier on the base LR at optimizer step `s`: linear warmup, then cosine / linear to 0 or constant."""

    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear

    return fn


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio) if warmup_ratio > 0 else 0
