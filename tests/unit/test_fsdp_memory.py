"""cardforge.pipeline.fsdp_memory: the per-rank split of FSDP2 training that `make plan` prints."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings, strategies as st

from cardforge.pipeline import fsdp_memory as fm

shapes = st.lists(st.integers(1, 300), min_size=1, max_size=3).map(tuple)


@given(shapes, st.integers(1, 16))
@settings(max_examples=200, deadline=None)
def test_largest_shard_is_torch_chunk_on_dim0(shape, world):
    chunks = torch.empty(shape, device="meta").chunk(world, dim=0)
    assert fm.shard_numel(shape, world) == max(c.numel() for c in chunks)
    # the shards of all ranks cover the tensor once; no rank's shard is more than one row over an even split
    assert sum(c.numel() for c in chunks) == math.prod(shape)
    assert fm.shard_numel(shape, world) <= math.prod(shape) / world + math.prod(shape[1:])


def test_units_split_layers_embeddings_and_head():
    t = {"model.embed_tokens.weight": (100, 8), "model.layers.0.mlp.up_proj.weight": (16, 8),
         "model.layers.0.input_layernorm.weight": (8,), "model.layers.1.mlp.up_proj.weight": (32, 8),
         "model.norm.weight": (8,), "lm_head.weight": (100, 8)}
    assert fm.units(t) == {"embed": 800, "layer.0": 136, "layer.1": 256, "root": 8, "lm_head": 800}
    w = fm.rank_weight_bytes(t, 2)
    assert w["gathered"] == 2 * 800 * 2 and w["sharded"] == (400 + 64 + 4 + 128 + 4 + 400) * 2
    assert fm.rank_weight_bytes(t, 1)["gathered"] == 0


def test_qwen36_27b_plan_per_gpu():
    from cardforge.core.models import layout

    rows = fm.plan_rows(layout.qwen36_27b_config(), ["q_proj", "down_proj"], 64, 32768)
    assert [r["gpus"] for r in rows] == [2, 4, 8]
    base = 2 * layout.parameters(layout.qwen36_27b_config())["language_model"]
    # the sharded base halves with every doubling, within one row per tensor of an even split
    for r in rows:
        assert base / r["gpus"] <= r["base_sharded"] <= base / r["gpus"] * 1.01 + 2 * 2**30
    assert rows[0]["total"] > rows[1]["total"] > rows[2]["total"]
    assert rows[0]["activations"] == rows[2]["activations"]  # per rank: its own micro-batch
    assert "2 GPUs" in fm.plan_line(rows, 32768) and "8 GPUs" in fm.plan_line(rows, 32768)


def test_make_plan_prints_the_27b_per_gpu_split_at_32k_from_these_formulas():
    """Issue 21 item 3, until a multi-GPU machine is lent: `make plan EXP=qwen36_27b_card` (plan.plan) prints the
    FSDP2 memory per GPU for the full 27B at data.max_seq_len = 32768 on 2/4/8 GPUs, from plan_rows, whose weight
    part is rank_weight_bytes: the formula tests/integration/test_fsdp2_memory.py measures on CPU ranks."""
    from cardforge.core.config.compose import compose
    from cardforge.core.models import layout
    from cardforge.pipeline import plan

    cfg = compose("pipeline", ["experiment=qwen36_27b_card"])
    seq = int(cfg.data.max_seq_len)
    assert seq == 32768 and layout.known_config(cfg.model) == layout.qwen36_27b_config()
    train = {stage: needs for stage, _, needs in plan.plan(cfg)}["train"]
    rows = fm.plan_rows(layout.qwen36_27b_config(), list(cfg.lora.target_modules), int(cfg.lora.r), seq)
    assert fm.plan_line(rows, seq) in train
    tensors = fm.text_tensors(layout.inventory(layout.qwen36_27b_config()))
    assert 26.8e9 < sum(math.prod(s) for s in tensors.values()) < 27.0e9  # the text view the stage loads
    for r in rows:
        assert r["base_sharded"] + r["base_gathered"] == fm.rank_weight_bytes(tensors, r["gpus"])["total"]
    gib = 2**30
    # what the plan says today (AdamW fp32 LoRA state, checkpointing per layer): 2 GPUs fit an 80 GB H100
    assert [round(r["total"] / gib, 1) for r in rows] == [64.4, 50.1, 43.0]
    assert "2 GPUs 64.4 GiB" in train and "4 GPUs 50.1 GiB" in train and "8 GPUs 43.0 GiB" in train
