"""tiny-qwen36-vl-mtp: the real Qwen3.6-27B checkpoint layout scaled down (outer qwen3_5 config, text_config +
vision_config, model.language_model.* / model.visual.* / lm_head / mtp.*), checked against the real repo's
index facts (cardforge.core.models.layout) and against tiny-qwen35-mtp, whose text weights it carries."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from cardforge.core.models import layout
from cardforge.core.models.mtp import INDEX, mtp_manifest, read_mtp_tensors


def _tensors(d):
    index = json.loads((d / INDEX).read_text())["weight_map"]
    out = {}
    for shard in sorted(set(index.values())):
        with safe_open(str(d / shard), "pt") as f:
            for n in f.keys():  # noqa: SIM118
                out[n] = f.get_tensor(n)
    return out, index


def test_config_nesting_is_the_real_repos(tiny_vl_model_dir):
    cfg = json.loads((tiny_vl_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_5" and cfg["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert text["model_type"] == "qwen3_5_text" and text["mtp_num_hidden_layers"] == 1
    assert vision["model_type"] == "qwen3_5_vision" and vision["out_hidden_size"] == text["hidden_size"]
    real = layout.qwen36_27b_config()
    for key in ("patch_size", "temporal_patch_size", "spatial_merge_size", "hidden_act", "in_channels"):
        assert vision[key] == real["vision_config"][key], key
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert cfg[key] == real[key], key  # the real tokenizer's ids
    assert not cfg["tie_word_embeddings"] and "architectures" not in text


def test_tensor_names_and_dtypes_are_the_real_layout(tiny_vl_model_dir):
    tensors, index = _tensors(tiny_vl_model_dir)
    cfg = json.loads((tiny_vl_model_dir / "config.json").read_text())
    want = layout.inventory(cfg)
    assert {n: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in tensors.items()} == want
    assert set(index) == set(tensors)
    assert layout.counts(tensors) == {"language_model": 55, "visual": 33, "mtp": 15, "lm_head": 1}
    # the same names as the 27B's, layer numbers aside; and the 27B's inventory is the real index
    real = layout.inventory(layout.qwen36_27b_config())
    assert layout.patterns(tensors) == layout.patterns(real)
    assert layout.counts(real) == layout.REAL_INDEX_COUNTS
    total = sum(layout.numel(s) * 2 for s, _ in real.values()) / 1e9
    assert abs(total - layout.REAL_TOTAL_SIZE_GB) < 0.01, total


def test_text_weights_and_head_are_tiny_qwen35s(tiny_vl_model_dir, tiny_model_dir):
    vl, _ = _tensors(tiny_vl_model_dir)
    text, _ = _tensors(tiny_model_dir)
    renamed = {(layout.LANGUAGE + n[len("model."):] if n.startswith("model.") else n): t for n, t in text.items()}
    assert set(renamed) == {n for n in vl if not n.startswith(layout.VISUAL)}
    for n, t in renamed.items():
        assert torch.equal(vl[n], t), n
    assert mtp_manifest(tiny_vl_model_dir)["tensors"] == mtp_manifest(tiny_model_dir)["tensors"]


def test_transformers_loads_both_views(tiny_vl_model_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM, Qwen3_5ForConditionalGeneration

    ids = torch.tensor([[9707, 11, 1879, 0, 42]])
    text = AutoModelForCausalLM.from_pretrained(tiny_vl_model_dir, dtype=torch.float32)  # the text view
    assert type(text).__name__ == "Qwen3_5ForCausalLM"
    old = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(text(ids).logits, old(ids).logits, rtol=0, atol=0)
    full, info = Qwen3_5ForConditionalGeneration.from_pretrained(tiny_vl_model_dir, dtype=torch.float32,
                                                                 output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) <= set(read_mtp_tensors(tiny_vl_model_dir))
    # one 32x32 image = 2x2 patches of 16 -> one merged token
    cfg = full.config
    image = cfg.image_token_id
    seq = torch.tensor([[cfg.vision_start_token_id, image, cfg.vision_end_token_id, 9707]])
    pixels = torch.randn(4, 3 * 2 * 16 * 16)
    with torch.no_grad():
        out = full(input_ids=seq, pixel_values=pixels, image_grid_thw=torch.tensor([[1, 2, 2]]),
                   mm_token_type_ids=(seq == image).long())
    assert out.logits.shape == (1, 4, 248320) and torch.isfinite(out.logits).all()


def test_chat_template_is_the_pinned_base_template(tiny_vl_model_dir):
    from cardforge.core.chat.template import QWEN35_TEMPLATE_SHA256

    jinja = (tiny_vl_model_dir / "chat_template.jinja").read_bytes()
    assert hashlib.sha256(jinja).hexdigest() == QWEN35_TEMPLATE_SHA256
    tok_cfg = json.loads((tiny_vl_model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == jinja.decode()
    pre = json.loads((tiny_vl_model_dir / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == [0.5] * 3 and pre["patch_size"] == 16 and pre["merge_size"] == 2


@pytest.mark.parametrize("target", ["qkv", "proj", "linear_fc1", "linear_fc2"])
def test_lora_targets_on_the_real_27b_names_never_reach_the_tower(target):
    # the vision tower's own Linear names: a target list naming them still matches nothing there
    got = layout.lora_targets(layout.qwen36_27b_config(), [target])
    assert got[target] == []
