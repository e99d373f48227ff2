"""The LoRA target resolver: qwen3_5 attention + MLP + Gated DeltaNet names, llama names, one-line failures."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cardforge.core.config.compose import compose
from cardforge.train.lora import LoraTargetError, apply_lora, resolve_targets


def _meta_model(name: str):
    """The real architecture from the embedded model's config.json, on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from cardforge.core.models import prepare

    config = AutoConfig.from_pretrained(prepare(name))  # outside the meta context: prepare may build the model
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def test_qwen35_config_targets_match_attention_mlp_and_gdn():
    cfg = compose("train", ["experiment=tiny"])
    matched = resolve_targets(_meta_model("tiny-qwen35-mtp"), list(cfg.lora.target_modules))
    # 3 Gated DeltaNet layers + 1 full-attention layer, an MLP in each
    assert {t: len(v) for t, v in matched.items()} == {
        "q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 1, "gate_proj": 4, "up_proj": 4, "down_proj": 4,
        "in_proj_qkv": 3, "in_proj_z": 3, "in_proj_b": 3, "in_proj_a": 3, "out_proj": 3}
    assert matched["in_proj_qkv"] == [f"model.layers.{i}.linear_attn.in_proj_qkv" for i in range(3)]
    assert matched["q_proj"] == ["model.layers.3.self_attn.q_proj"]


def test_llama_config_targets_match_smollm2():
    cfg = compose("train", ["experiment=smollm2_demo"])
    matched = resolve_targets(_meta_model("smollm2-135m-instruct"), list(cfg.lora.target_modules))
    assert {len(v) for v in matched.values()} == {30}  # every one of SmolLM2's 30 layers


def test_unmatched_target_fails_with_one_line():
    model = _meta_model("smollm2-135m-instruct")
    with pytest.raises(LoraTargetError) as e:
        resolve_targets(model, ["q_proj", "in_proj_qkv", "qkv"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("lora.target_modules: in_proj_qkv, qkv match no linear module of LlamaForCausalLM; "
                          "its linear modules are: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")


def test_apply_lora_instantiates_peft_config_from_the_group(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cfg = compose("train", ["lora.r=4", "lora.target_modules=[in_proj_qkv,down_proj]"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model, matched = apply_lora(model, cfg.lora)
    assert peft_model.peft_config["default"].r == 4
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * (3 + 4) and all("lora_" in n for n in trainable)
    assert OmegaConf.to_container(cfg.lora.target_modules) == list(matched)


def test_save_adapter_writes_what_peft_writes(tiny_model_dir, tmp_path):
    """Our adapter writer (used because PEFT's own finds nothing once FSDP wraps the modules) produces the same
    files PEFT does for an unwrapped model: same tensor names, same values, same adapter_config."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cardforge.train.stage import save_adapter

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "in_proj_qkv", "down_proj"],
                                            init_lora_weights=False))
    model.save_pretrained(tmp_path / "peft")
    # the state dict as the train stage gathers it: the LightningModule's names ("model." + PeftModel's)
    gathered = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_adapter(model, {k.removeprefix("model."): v for k, v in gathered.items()}, tmp_path / "ours")
    want, got = load_file(tmp_path / "peft" / "adapter_model.safetensors"), load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert sorted(got) == sorted(want) and len(got) > 0
    assert all(torch.equal(got[k], want[k]) for k in want)
    ours, theirs = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("ours", "peft"))
    for cfg in (ours, theirs):  # PEFT keeps target_modules as a set: its JSON order follows the string hash seed
        cfg["target_modules"] = sorted(cfg["target_modules"])
    assert ours == theirs


def test_vl_model_targets_resolve_on_the_language_model_only(tiny_vl_model_dir):
    """The full vision-language model (tower loaded): the card's targets match the language model's real names,
    the tower's own Linear names match nothing, and PEFT puts no adapter inside model.visual.*."""
    from transformers import Qwen3_5ForConditionalGeneration

    cfg = compose("train", ["experiment=tiny"])
    model = Qwen3_5ForConditionalGeneration.from_pretrained(tiny_vl_model_dir, dtype=torch.float32)
    matched = resolve_targets(model, list(cfg.lora.target_modules))
    assert matched["q_proj"] == ["model.language_model.layers.3.self_attn.q_proj"]
    assert matched["in_proj_qkv"] == [f"model.language_model.layers.{i}.linear_attn.in_proj_qkv" for i in range(3)]
    assert sum(len(v) for v in matched.values()) == 31
    with pytest.raises(LoraTargetError, match="qkv, linear_fc1 match no linear module"):
        resolve_targets(model, ["q_proj", "qkv", "linear_fc1"])
    peft_model, _ = apply_lora(model, OmegaConf.create({**OmegaConf.to_container(cfg.lora), "r": 2,
                                                        "target_modules": ["q_proj", "out_proj"]}))
    assert peft_model.peft_config["default"].exclude_modules == r"(.*\.)?visual(\..*)?"
    lora = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert lora and not [n for n in lora if ".visual." in n]
    assert any(".language_model.layers.0.linear_attn.out_proj" in n for n in lora)


def test_card_targets_on_the_real_27b_layout():
    """experiment=qwen36_27b_card's targets on Qwen3.6-27B's real module names (meta device, no weights)."""
    from cardforge.core.models import layout

    cfg = compose("train", ["experiment=qwen36_27b_card"])
    model = layout.meta_model(layout.qwen36_27b_config())
    matched = resolve_targets(model, list(cfg.lora.target_modules))
    assert {t: len(v) for t, v in matched.items()} == {
        "q_proj": 16, "k_proj": 16, "v_proj": 16, "o_proj": 16, "gate_proj": 64, "up_proj": 64, "down_proj": 64,
        "in_proj_qkv": 48, "in_proj_z": 48, "in_proj_b": 48, "in_proj_a": 48, "out_proj": 48}
    assert all(n.startswith("model.language_model.layers.") for v in matched.values() for n in v)
