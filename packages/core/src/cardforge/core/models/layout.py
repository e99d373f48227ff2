"""The real Qwen3.6-27B checkpoint layout, derived offline from its config (no weights needed).

Public facts (docs/release.md and ../shared/REFERENCE.md cite them): the repo's config.json is a
`qwen3_5` / Qwen3_5ForConditionalGeneration config wrapping the text config below and a 27-block vision tower;
its model.safetensors.index.json lists 850 `model.language_model.*`, 333 `model.visual.*`, 15 `mtp.*` tensors
and `lm_head.weight`, total_size 55.56 GB, every tensor bf16.

`inventory(config)` builds the transformers model on the meta device (no memory) and adds the MTP head's
shapes, so the same function describes the 27B and the tiny embedded model: their tensor-name patterns
(layer numbers masked) must be equal, and the 27B's counts and bytes must match the real index
(tests/unit/test_embedded_models_vl.py::test_tensor_names_and_dtypes_are_the_real_layout). The pipeline plan
uses it for the LoRA targets, parameter counts and sizes.
"""

from __future__ import annotations

import re
from functools import lru_cache

from cardforge.core.models import mtp

LANGUAGE, VISUAL, MTP, LM_HEAD = "model.language_model.", "model.visual.", "mtp.", "lm_head."
# model.safetensors.index.json of Qwen/Qwen3.6-27B: tensors per prefix, and its metadata.total_size
REAL_INDEX_COUNTS = {"language_model": 850, "visual": 333, "mtp": 15, "lm_head": 1}
REAL_TOTAL_SIZE_GB = 55.56

QWEN36_27B_TEXT = {
    "vocab_size": 248320, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 64,
    "full_attention_interval": 4, "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256,
    "linear_num_key_heads": 16, "linear_num_value_heads": 48, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "tie_word_embeddings": False,
    "mtp_num_hidden_layers": 1, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": True},
}
QWEN36_27B_VISION = {
    "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
    "temporal_patch_size": 2, "spatial_merge_size": 2, "out_hidden_size": 5120, "num_position_embeddings": 2304,
    "in_channels": 3, "hidden_act": "gelu_pytorch_tanh", "deepstack_visual_indexes": [],
}


def qwen36_27b_config() -> dict:
    """The outer config.json of Qwen/Qwen3.6-27B (the keys that shape the weights)."""
    return {"architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
            "text_config": {"model_type": "qwen3_5_text", **QWEN36_27B_TEXT},
            "vision_config": {"model_type": "qwen3_5_vision", **QWEN36_27B_VISION},
            "image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
            "vision_end_token_id": 248054, "tie_word_embeddings": False}


def meta_model(config: dict):
    """Qwen3_5ForConditionalGeneration (or, for a text-only config, Qwen3_5ForCausalLM) on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3_5ForConditionalGeneration

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    with torch.device("meta"):
        if config.get("model_type") == "qwen3_5":
            return Qwen3_5ForConditionalGeneration(cfg)
        return AutoModelForCausalLM.from_config(cfg)


def _text(config: dict) -> dict:
    return config.get("text_config", config)


@lru_cache(maxsize=4)
def _inventory(key: str) -> dict[str, tuple[tuple[int, ...], str]]:
    import json

    config = json.loads(key)
    model = meta_model(config)
    out = {n: (tuple(t.shape), "bfloat16") for n, t in model.state_dict().items()}
    t = _text(config)
    if t.get("mtp_num_hidden_layers", 0):
        out.update({n: (tuple(s), "bfloat16") for n, s in mtp.mtp_shapes(
            t["hidden_size"], t["intermediate_size"], t["num_attention_heads"], t["num_key_value_heads"],
            t["head_dim"]).items()})
    return dict(sorted(out.items()))


def inventory(config: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of the checkpoint `config` describes: name -> (shape, dtype), as the HF repo stores it."""
    import json

    return _inventory(json.dumps(config, sort_keys=True))


def part(name: str) -> str:
    """language_model | visual | mtp | lm_head (| other, for a text-only checkpoint's model.*)."""
    for prefix, key in ((LANGUAGE, "language_model"), (VISUAL, "visual"), (MTP, "mtp"), (LM_HEAD, "lm_head")):
        if name.startswith(prefix):
            return key
    return "other"


def counts(names) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[part(n)] = out.get(part(n), 0) + 1
    return out


def patterns(names) -> set[str]:
    """Tensor names with layer/block numbers masked: the layout without its depth."""
    return {re.sub(r"\.\d+\.", ".N.", n) for n in names}


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def parameters(config: dict) -> dict[str, int]:
    """Parameter count per part (language_model, visual, mtp, lm_head) and `total`."""
    out: dict[str, int] = {}
    for name, (shape, _) in inventory(config).items():
        out[part(name)] = out.get(part(name), 0) + numel(shape)
    out["total"] = sum(out.values())
    return out


def lora_targets(config: dict, targets: list[str]) -> dict[str, list[tuple[int, int]]]:
    """{target: [(in_features, out_features) of each Linear it matches]} on the real module names, the way
    cardforge.train.lora resolves them (PEFT's suffix rule), never inside the vision tower or lm_head."""
    import torch

    model = meta_model(config)
    out: dict[str, list[tuple[int, int]]] = {t: [] for t in targets}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or name.startswith(("model.visual", "visual", "lm_head")):
            continue
        for t in targets:
            if name == t or name.endswith("." + t):
                out[t].append((mod.in_features, mod.out_features))
    return out


def lora_parameters(config: dict, targets: list[str], r: int) -> int:
    return sum(r * (i + o) for shapes in lora_targets(config, targets).values() for i, o in shapes)


def known_config(model_cfg) -> dict | None:
    """The config.json a `model` config group describes, without weights: the local checkpoint's (an embedded
    model's cache dir or model.path), else the real Qwen3.6-27B's for that name; None when unknown."""
    import json
    from pathlib import Path

    path = str(getattr(model_cfg, "path", "") or "")
    if path and (Path(path) / "config.json").is_file():
        return json.loads((Path(path) / "config.json").read_text())
    if str(model_cfg.name).startswith("Qwen3.6-27B"):
        return qwen36_27b_config()
    return None


def plan_facts(config: dict, targets: list[str], r: int, optimizer: str = "paged_adamw_8bit",
               weight_bytes: int = 2) -> dict:
    """What the pipeline plan says about a checkpoint: parameters per part, the text view the train stage loads,
    the LoRA modules on the real names and their parameters, and the training memory floor (weights + LoRA
    weights, gradients and optimizer state; activations come on top). `weight_bytes`: the base's dtype, 2 for
    bf16, 4 for fp32 (the CPU trainer)."""
    params = parameters(config)
    matched = lora_targets(config, targets)
    lora = sum(r * (i + o) for shapes in matched.values() for i, o in shapes)
    text_view = params.get("language_model", 0) + params.get("lm_head", 0) + params.get("other", 0)
    opt_bytes = 2 if "8bit" in optimizer else 8  # AdamW moments: 8-bit paged (2 x 1 byte) or fp32 (2 x 4)
    return {
        "params": params,
        "bf16_bytes": 2 * params["total"],
        "text_view_params": text_view,
        "lora_modules": {t: len(v) for t, v in matched.items()},
        "lora_params": lora,
        "adapter_bytes": 4 * lora,  # PEFT keeps (and saves) the adapter in fp32
        "train_floor_bytes": weight_bytes * text_view + lora * (4 + 4 + opt_bytes),  # base + fp32 LoRA, grads, moments
    }
