"""Per-rank memory of FSDP2 LoRA training: what each of N ranks (GPUs) holds, from the checkpoint's layout.

FSDP2 (`fully_shard` per decoder layer, then the root) shards every parameter on dim 0 across the N ranks
(`torch.chunk`: ranks get ceil(rows / N) rows, the last ones fewer). Per rank:

- sharded, / N: the frozen bf16 base; the fp32 LoRA weights, their fp32 gradients and the optimizer's moments
  (AdamW: 2 x fp32, what `trainer=fsdp` runs: bitsandbytes' 8-bit optimizer does not take FSDP2's DTensors;
  paged AdamW 8-bit would be 2 x 1 byte);
- the working set: the all-gathered bf16 parameters of the unit being computed and of the next one (FSDP2
  prefetches one unit ahead): 2 x the largest unit (a decoder layer, the input embeddings or the lm_head);
- activations, each rank its own micro-batch of `seq` tokens, with activation checkpointing per decoder layer:
  every layer's input (bf16, seq x hidden) kept for the backward, plus one layer recomputed
  (ACT_HIDDEN x hidden + ACT_INTERMEDIATE x intermediate bf16 values per token: the q/k/v/gate projections,
  the MLP's gate, up and product) and the chunked cross-entropy's fp32 logits of CE_CHUNK tokens.

The weights part is what the CPU test pins (`tests/integration/test_fsdp2_memory.py`: 2 gloo ranks load their
shards of a multi-GB random checkpoint; each rank's peak RSS stays within `rank_weight_bytes` + a constant).
The activation part is an estimate (coefficients stated here), not yet measured on GPUs (issue 21 item 3: no
multi-GPU machine has been lent; until one is, these per-GPU numbers stand in for the scaling measurement).
The units match what the train stage shards (`trainer=fsdp`, cardforge.train.fsdp2): each decoder layer, the input
embeddings and the lm_head; the root (the stage's loss module) holds the final norm.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

ACT_HIDDEN = 16  # bf16 values per token x hidden_size live while one decoder layer is recomputed and backpropagated
ACT_INTERMEDIATE = 4  # ... x intermediate_size (MLP gate, up, act(gate) * up, its gradient)
CE_CHUNK = 1024  # tokens per chunk of cardforge's chunked cross-entropy (train.fast.loss)
LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")


def shard_rows(rows: int, world: int) -> int:
    """Rows of the largest dim-0 shard (torch.chunk: ceil(rows / world))."""
    return -(-rows // world) if rows else 0


def shard_numel(shape: tuple[int, ...], world: int) -> int:
    """Elements of the largest rank's dim-0 shard of a tensor of `shape`."""
    if not shape:
        return 1
    return shard_rows(shape[0], world) * math.prod(shape[1:])


def units(tensors: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Elements per FSDP unit: one per decoder layer (`...layers.<i>.`), the input embeddings and the lm_head each
    their own (cardforge.train.distributed wraps them so), the rest (final norm) in the root."""
    out: dict[str, int] = {}
    for name, shape in tensors.items():
        m = LAYER.search(name)
        key = (f"layer.{m.group(2)}" if m else "embed" if "embed_tokens" in name else "lm_head" if "lm_head" in name
               else "root")
        out[key] = out.get(key, 0) + math.prod(shape)
    return out


def rank_weight_bytes(tensors: dict[str, tuple[int, ...]], world: int, bytes_per: int = 2) -> dict[str, int]:
    """Base-weight bytes one rank holds: its shard of every tensor (`sharded`), and the working set of two
    all-gathered units (`gathered`; 0 on one rank: nothing is gathered)."""
    sharded = sum(shard_numel(s, world) for s in tensors.values()) * bytes_per
    gathered = 2 * max(units(tensors).values(), default=0) * bytes_per if world > 1 else 0
    return {"sharded": sharded, "gathered": gathered, "total": sharded + gathered}


def text_tensors(inventory: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[int, ...]]:
    """The tensors the train stage loads (the text view: no vision tower, no MTP head) from layout.inventory."""
    skip = ("visual.", "mtp.")
    return {n: shape for n, (shape, _) in inventory.items()
            if not any(n.startswith(s) or f".{s}" in n for s in skip)}


def rank_memory(tensors: dict[str, tuple[int, ...]], lora_params: int, world: int, seq: int, *, hidden: int,
                intermediate: int, layers: int, vocab: int, optimizer: str = "adamw", batch: int = 1) -> dict[str, int]:
    """Bytes per rank of FSDP2 LoRA training (module docstring): one entry per part and `total`."""
    w = rank_weight_bytes(tensors, world)
    opt = 2 if "8bit" in optimizer else 8
    lora = -(-lora_params // world) * (4 + 4 + opt)
    tokens = batch * seq
    act = tokens * hidden * 2 * layers + tokens * (ACT_HIDDEN * hidden + ACT_INTERMEDIATE * intermediate) * 2
    ce = min(tokens, CE_CHUNK) * vocab * 4 * 2  # logits and their softmax gradient, fp32
    parts = {"base_sharded": w["sharded"], "base_gathered": w["gathered"], "lora_state": lora,
             "activations": act, "cross_entropy": ce}
    parts["total"] = sum(parts.values())
    return parts


def plan_rows(config: dict, targets: list[str], r: int, seq: int, worlds: Iterable[int] = (2, 4, 8),
              optimizer: str = "adamw") -> list[dict]:
    """rank_memory of the checkpoint `config` (layout.qwen36_27b_config() or a local config.json) on each world."""
    from cardforge.core.models import layout

    text = layout._text(config)
    tensors = text_tensors(layout.inventory(config))
    lora = layout.lora_parameters(config, targets, r)
    out = []
    for n in worlds:
        m = rank_memory(tensors, lora, n, seq, hidden=int(text["hidden_size"]),
                        intermediate=int(text["intermediate_size"]), layers=int(text["num_hidden_layers"]),
                        vocab=int(text["vocab_size"]), optimizer=optimizer)
        out.append({"gpus": n, **m})
    return out


def plan_line(rows: list[dict], seq: int) -> str:
    gib = 2**30
    per = "; ".join(f"{r['gpus']} GPUs {r['total'] / gib:.1f} GiB (base {r['base_sharded'] / gib:.1f} + gathered "
                    f"{r['base_gathered'] / gib:.1f} + LoRA state {r['lora_state'] / gib:.2f} + activations "
                    f"{(r['activations'] + r['cross_entropy']) / gib:.1f})" for r in rows)
    return (f"FSDP2 per GPU at seq {seq} (bf16 base sharded, fp32 LoRA, checkpointing per layer; "
            f"cardforge.pipeline.fsdp_memory, weights part measured on CPU): {per}")
