"""Packing: several samples per row, each one computed as if it ran alone.

`pack_rows(samples, row_len)` groups samples into rows of at most `row_len` tokens (first-fit decreasing: few rows,
little padding); `collate_packed(rows, pad_id, row_len)` lays them out left to right and right-pads every row to
exactly `row_len`, so a compiled model sees ONE shape whatever the lengths (one compile per layer kind).

A packed batch carries, besides `input_ids` / `attention_mask` (1 on sample tokens, 0 on the padding tail) /
`loss_mask`:
- `position_ids` [B, T]: each token's position within its own sample (RoPE as in the sample alone); 0 marks a
  sample start. The padding tail is a segment of its own (positions from 0, never a target).
- `cu_seqlens` int32 [B*T + 1]: segment offsets in the flattened batch (samples and padding tails), padded with
  B*T to a fixed length (a fixed shape for the compiled layers).
- `attn_meta` int64 [2], kept on the CPU: (segments, longest segment), read by the flash varlen kernel without a
  device sync.
The boundaries are exact: attention is block-diagonal (`fast.attention`), the Gated DeltaNet recurrence and its
causal conv1d restart at every sample start (`fast.gdn` `reset`, `fast.patch.packed_conv`), and a sample's first
token is never a target (nothing before it in its sample predicts it): the per-token losses and the gradients
equal those of the samples run one by one (tests/unit/test_fast_train.py, float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

PACKED_KEYS = ("position_ids", "cu_seqlens", "attn_meta")


@dataclass(frozen=True)
class PackedRow:
    samples: tuple  # of data.Sample

    @property
    def tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.samples)


def pack_lengths(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Indices grouped into rows whose lengths sum to <= row_len: first-fit decreasing (ties by index, so the
    result depends on the lengths only)."""
    if row_len < 1:
        raise ValueError(f"row length must be >= 1, got {row_len}")
    too_long = [i for i, n in enumerate(lengths) if n > row_len]
    if too_long:
        raise ValueError(f"sample {too_long[0]} has {lengths[too_long[0]]} tokens, more than the packed row length "
                         f"{row_len}: raise trainer.pack_length or lower data.max_seq_len")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_len - n)
    return [sorted(r) for r in rows]


def pack_rows(samples: Sequence, row_len: int) -> list[PackedRow]:
    return [PackedRow(tuple(samples[i] for i in row))
            for row in pack_lengths([len(s.input_ids) for s in samples], row_len)]


def collate_packed(rows: Sequence[PackedRow], pad_id: int, row_len: int) -> dict[str, torch.Tensor]:
    """Rows of samples -> one packed batch of shape [len(rows), row_len] (see the module docstring)."""
    B, T = len(rows), row_len
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg_lens: list[int] = []
    for b, row in enumerate(rows):
        at = 0
        for s in (row.samples if isinstance(row, PackedRow) else row):
            n = len(s.input_ids)
            if at + n > T:
                raise ValueError(f"row {b} holds {at + n}+ tokens, more than the row length {T}")
            ids[b, at:at + n] = torch.tensor(s.input_ids, dtype=torch.long)
            attn[b, at:at + n] = 1
            mask[b, at:at + n] = torch.tensor(s.loss_mask, dtype=torch.long)
            mask[b, at] = 0  # a sample's first token has nothing of its own sample before it
            pos[b, at:at + n] = torch.arange(n)
            seg_lens.append(n)
            at += n
        if at < T:  # the padding tail: a segment of its own, never a target
            pos[b, at:] = torch.arange(T - at)
            seg_lens.append(T - at)
    cu = torch.full((B * T + 1,), B * T, dtype=torch.int32)
    offsets = torch.tensor([0] + seg_lens, dtype=torch.int64).cumsum(0)
    cu[: len(offsets)] = offsets.to(torch.int32)
    meta = torch.tensor([len(seg_lens), max(seg_lens)], dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask, "position_ids": pos, "cu_seqlens": cu,
            "attn_meta": meta}


def is_packed(batch: dict) -> bool:
    return "position_ids" in batch


def model_kwargs(batch: dict) -> dict:
    """What the decoder gets for a packed batch: no masks at all (the boundaries travel as positions and
    offsets), per-sample positions for RoPE, and the keywords cardforge's attention / GDN layers read."""
    pos = batch["position_ids"]
    meta = batch["attn_meta"]
    if meta.device.type != "cpu":
        meta = meta.cpu()  # normally kept there by DistillModule.transfer_batch_to_device (a sync otherwise)
    return {"attention_mask": {"full_attention": None, "linear_attention": None}, "position_ids": pos,
            "cf_pos": pos, "cf_cu_seqlens": batch["cu_seqlens"].to(pos.device), "cf_attn_meta": meta}
