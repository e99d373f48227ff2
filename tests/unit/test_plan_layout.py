"""`make plan EXP=qwen36_27b_card` against the real Qwen3.6-27B layout (no weights): which modules get LoRA, how
many parameters, memory and disk per stage; the sizes checked against the card's published files."""

from __future__ import annotations

import pytest

from cardforge.core.config.compose import compose
from cardforge.core.models import layout
from cardforge.pipeline import plan

# the seed card's files: GGUF sizes in GB (its table), NVFP4 repos in "G" (GiB as `du -h` prints them)
CARD_GGUF_GB = {"Q4_K_M": 16.8, "Q5_K_M": 19.5, "Q6_K": 22.4, "Q8_0": 29.0}
CARD_NVFP4_GIB = {"W4A16": 29, "W4A4": 20}


@pytest.fixture(scope="module")
def card():
    cfg = compose("pipeline", ["experiment=qwen36_27b_card"])
    return cfg, plan.checkpoint_layout(cfg)


def test_lora_modules_and_parameters_on_the_real_names(card):
    cfg, facts = card
    t = layout.QWEN36_27B_TEXT
    h, r = t["hidden_size"], cfg.lora.r
    n_attn = t["num_hidden_layers"] // t["full_attention_interval"]
    n_gdn = t["num_hidden_layers"] - n_attn
    q = 2 * t["num_attention_heads"] * t["head_dim"]  # query + output gate
    kv = t["num_key_value_heads"] * t["head_dim"]
    qk = t["linear_num_key_heads"] * t["linear_key_head_dim"]
    v = t["linear_num_value_heads"] * t["linear_value_head_dim"]
    f = t["intermediate_size"]
    per_attn = (h + q) + 2 * (h + kv) + (q // 2 + h)
    per_mlp = 2 * (h + f) + (f + h)
    per_gdn = (h + 2 * qk + v) + (h + v) + 2 * (h + t["linear_num_value_heads"]) + (v + h)
    want = r * (n_attn * per_attn + t["num_hidden_layers"] * per_mlp + n_gdn * per_gdn)
    assert facts["lora_params"] == want == 466_911_232
    assert facts["lora_modules"] == {"q_proj": 16, "k_proj": 16, "v_proj": 16, "o_proj": 16, "gate_proj": 64,
                                     "up_proj": 64, "down_proj": 64, "in_proj_qkv": 48, "in_proj_z": 48,
                                     "in_proj_b": 48, "in_proj_a": 48, "out_proj": 48}
    # the text view the train stage loads: language model + lm_head, no tower, no MTP head
    p = facts["params"]
    assert facts["text_view_params"] == p["language_model"] + p["lm_head"]
    assert p["total"] == p["language_model"] + p["lm_head"] + p["visual"] + p["mtp"]
    assert facts["adapter_bytes"] == 4 * want
    assert facts["train_floor_bytes"] == 2 * facts["text_view_params"] + want * (4 + 4 + 2)  # paged_adamw_8bit


def test_sizes_match_the_real_index_and_the_cards_files(card):
    _, facts = card
    size = facts["sizes"]
    assert abs(size["BF16"] / 1e9 - layout.REAL_TOTAL_SIZE_GB) < 0.01  # the repo's index total_size
    for tier, gb in CARD_GGUF_GB.items():
        assert abs(size[f"GGUF-{tier}"] / 1e9 - gb) / gb < 0.03, (tier, size[f"GGUF-{tier}"] / 1e9)
    for tier, gib in CARD_NVFP4_GIB.items():
        assert abs(size[f"NVFP4-{tier}"] / 2**30 - gib) < 1.0, (tier, size[f"NVFP4-{tier}"] / 2**30)
    # the tower never goes into the text GGUFs; it is its own file (BF16, patch embedding F32)
    assert 0.9e9 < size["mmproj"] < 0.95e9 and size["GGUF-BF16"] < size["BF16"] - size["mmproj"] + 0.05e9


def test_plan_rows_say_it(card):
    cfg, _ = card
    rows = {stage: needs for stage, _, needs in plan.plan(cfg)}
    assert "base weights at model.path=Qwen/Qwen3.6-27B: 55.6 GB (51.7 GiB)" in rows["models"]
    assert "visual 0.461B" in rows["models"] and "(27.78B)" in rows["models"]
    assert "LoRA r64 on 496 language-model modules" in rows["train"] and "466.9M params" in rows["train"]
    assert "none in the vision tower" in rows["train"]
    assert "disk 55.6 GB (51.7 GiB) in the base's layout (tower and MTP head byte-identical)" in rows["merge"]
    assert "mmproj ~0.9 GB" in rows["quant"] and "W4A16 ~31.0 GB (28.8 GiB), W4A4 ~20.6 GB (19.1 GiB)" in rows["quant"]
    assert "Q4_K_M GGUF (~16.7 GB (15.6 GiB))" in rows["eval"]
