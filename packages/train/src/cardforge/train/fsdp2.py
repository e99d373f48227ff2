"""`trainer=fsdp`: the train stage under FSDP2 (Lightning's ModelParallelStrategy + cardforge.train.distributed).

What runs (stage.train with trainer.strategy=fsdp):
1. The base is built on the meta device (`distributed.meta_model`, bf16, no memory), LoRA applied there (PEFT,
   fp32 adapters), cardforge's kernels patched in and, with `trainer.compile_layers`, each decoder layer marked for
   `torch.compile` (compiled lazily at its first call; dynamo skips FSDP2's hooks, so the unshard/reshard stay
   eager around each compiled layer).
2. Lightning starts the ranks and calls `DistillModule.configure_model`, which calls `shard_and_load`:
   `fully_shard` per decoder layer, embeddings and lm_head, with `ShardedLoss` (the module whose forward is the
   step's loss) as the root; `to_empty` + each rank reads only its rows from the safetensors files
   (`distributed.materialize`). No rank ever holds the whole base, and no fp32 copy of it exists.
3. Checkpoints are torch.distributed.checkpoint folders (each rank writes its shards of the LoRA weights and the
   optimizer state; `meta.pt` holds the loops, RNG, data position, loss history), swapped in atomically by
   `callbacks.AtomicLastCheckpoint`; the adapter is gathered (`full_lora_state`) and written by rank 0 only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import ModelParallelStrategy

from cardforge.train import distributed

log = logging.getLogger(__name__)


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy with every rank in the one data-parallel (FSDP) dimension, no tensor parallelism
    (Lightning's "auto" would put a node's ranks in a tensor-parallel dimension)."""

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()
        if self.root_device.type == "cpu":
            # every rank, before configure_model loads its shards: freed gathered weights go back to the OS at once
            # (distributed.bounded_malloc). Without it the train stage's ranks peaked at 5.1 and 6.2 GB RSS on the
            # 3.9 GB check checkpoint (more than the whole base), with it 3.2 GB (tests/integration/test_fsdp2_memory.py)
            log.info("FSDP2 on CPU: glibc mmap threshold fixed at 1 MiB: %s", distributed.bounded_malloc())


class ShardedLoss(torch.nn.Module):
    """The FSDP2 root: its forward is the step's masked LM loss, so FSDP2's root hooks (lazy init, unsharding the
    parameters no layer unit holds, the final-norm weight) wrap exactly what the step runs."""

    def __init__(self, peft_model: torch.nn.Module, chunked_ce: bool):
        super().__init__()
        self.model = peft_model
        self.chunked_ce = chunked_ce

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        from cardforge.train.module import masked_lm_loss

        return masked_lm_loss(self.model.get_base_model(), batch, chunked_ce=self.chunked_ce)


def head_loss(head: torch.nn.Module, chunked_ce: bool) -> None:
    """Make the lm_head's own call compute the loss (`head(h, labels)`): under FSDP2 its weight is gathered only
    inside its call, and the chunked cross-entropy reads the weight rather than calling the head."""
    from cardforge.train.fast.loss import linear_cross_entropy

    def forward(h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if chunked_ce and head.bias is None:
            return linear_cross_entropy(h, head.weight, labels)
        return F.cross_entropy(F.linear(h, head.weight, head.bias).float(), labels)

    head.forward = forward
    head._cf_loss_forward = True


def shard_and_load(peft_model: torch.nn.Module, model_dir: Path, mesh, device: torch.device, seed: int,
                   chunked_ce: bool) -> ShardedLoss:
    """FSDP2-shard the meta `peft_model` over `mesh` and load this rank's shards; returns the root loss module."""
    head = peft_model.get_base_model().get_output_embeddings()
    if any(head.weight is m.weight for m in peft_model.modules() if isinstance(m, torch.nn.Embedding)):
        raise RuntimeError("trainer=fsdp: tied input/output embeddings are not supported (the lm_head needs its own "
                           "FSDP unit)")
    head_loss(head, chunked_ce)
    root = ShardedLoss(peft_model, chunked_ce)
    distributed.materialize(peft_model, model_dir, mesh, device=device, seed=seed, root=root)
    return root


def full_lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LightningModule's trained tensors, gathered whole on rank 0's CPU (other ranks: {}). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def checkpoint_step(path: Path) -> int:
    """global_step of a train-stage checkpoint: a distributed-checkpoint folder (its meta.pt) or one file."""
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    path = Path(path)
    meta = path / _METADATA_FILENAME if path.is_dir() else path
    return int(torch.load(meta, map_location="cpu", weights_only=False)["global_step"])
