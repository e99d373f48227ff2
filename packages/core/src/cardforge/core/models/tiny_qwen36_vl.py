"""tiny-qwen36-vl-mtp: the REAL Qwen3.6-27B checkpoint layout, scaled down, random weights.

Qwen3.5/3.6 checkpoints are unified vision-language checkpoints, and this one is laid out the same way:
  config.json   model_type `qwen3_5`, architectures [Qwen3_5ForConditionalGeneration], `text_config` (the
                tiny-qwen35-mtp text architecture, model_type `qwen3_5_text`, mtp_num_hidden_layers 1) +
                `vision_config` (a 2-block tower of the real design: patch 16, temporal patch 2, 2x2 merge,
                gelu_pytorch_tanh, out_hidden_size = the text hidden size), image/video/vision token ids
  weights       model.language_model.* (embed_tokens, layers.N.{linear_attn|self_attn, mlp, norms}, norm),
                model.visual.* (patch_embed.proj Conv3d + bias, pos_embed, blocks.N.{norm1,norm2,attn.qkv,
                attn.proj,mlp.linear_fc1,mlp.linear_fc2}, merger.{norm,linear_fc1,linear_fc2}), lm_head.weight
                (model.safetensors) and the 15 mtp.* tensors (model-mtp.safetensors), all bf16, listed in
                model.safetensors.index.json; the names are the real repo's (test_embedded_models checks them
                against the real index's per-prefix counts)
  tokenizer     the real Qwen3.6 tokenizer (qwen36_tokenizer), preprocessor_config.json +
                video_preprocessor_config.json (llama.cpp's mmproj converter reads image_mean/std from it)
The language model's weights and the MTP head are tiny-qwen35-mtp's, byte for byte, under the real names
(same seeds): what trained on one trains identically on the other; the tower has its own seed.
"""

from __future__ import annotations

from pathlib import Path

from cardforge.core.io import atomic_write_bytes, atomic_write_json
from cardforge.core.models import mtp, qwen36_tokenizer, tiny_qwen35

SPEC = {
    **tiny_qwen35.SPEC,
    "vision_seed": 7,
    "vision_depth": 2,
    "vision_hidden_size": 64,
    "vision_intermediate_size": 128,
    "vision_num_heads": 2,  # head dim 32: llama.cpp's qwen3vl graph splits it into 4 rope sections of 8
    "vision_patch_size": 16,
    "vision_temporal_patch_size": 2,
    "vision_spatial_merge_size": 2,
    "vision_num_position_embeddings": 64,  # an 8 x 8 learned grid (the real one: 48 x 48 = 2304)
    # "qwen3.5": the base's own template (cardforge.core.chat.template, pinned from the llama.cpp sdist);
    # "cardforge": our Qwen3-style template (chat_template.jinja beside this file)
    "chat_template": "qwen3.5",
}
PACKAGES = tiny_qwen35.PACKAGES
SOURCES = (__file__, tiny_qwen35.__file__, mtp.__file__, qwen36_tokenizer.__file__, "chat_template.jinja")
LANGUAGE_PREFIX = "model.language_model."
VISUAL_PREFIX = "model.visual."


def vision_config(spec: dict):
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig

    return Qwen3_5VisionConfig(
        depth=spec["vision_depth"],
        hidden_size=spec["vision_hidden_size"],
        intermediate_size=spec["vision_intermediate_size"],
        num_heads=spec["vision_num_heads"],
        hidden_act="gelu_pytorch_tanh",
        in_channels=3,
        patch_size=spec["vision_patch_size"],
        temporal_patch_size=spec["vision_temporal_patch_size"],
        spatial_merge_size=spec["vision_spatial_merge_size"],
        out_hidden_size=spec["hidden_size"],
        num_position_embeddings=spec["vision_num_position_embeddings"],
        initializer_range=spec["initializer_range"],
        deepstack_visual_indexes=[],
    )


def model_config(spec: dict):
    from transformers import Qwen3_5Config

    ids = qwen36_tokenizer.token_ids()
    text = tiny_qwen35.text_config(spec)
    text.architectures = None  # the outer config names the architecture, as in the real repo
    config = Qwen3_5Config(
        text_config=text.to_dict(),
        vision_config=vision_config(spec).to_dict(),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        architectures=["Qwen3_5ForConditionalGeneration"],
    )
    config.dtype = "bfloat16"
    return config


def language_state(spec: dict) -> dict:
    """tiny-qwen35-mtp's trunk + lm_head (same seed, same init), renamed to the VL checkpoint's keys."""
    import torch
    from transformers import Qwen3_5ForCausalLM

    torch.manual_seed(spec["seed"])
    with torch.device("cpu"):
        model = Qwen3_5ForCausalLM(tiny_qwen35.text_config(spec)).eval()
    out = {}
    for name, t in model.state_dict().items():
        key = LANGUAGE_PREFIX + name.removeprefix("model.") if name.startswith("model.") else name
        out[key] = t.detach().to(torch.bfloat16).contiguous()
    return out


def vision_state(spec: dict) -> dict:
    import torch
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

    torch.manual_seed(spec["vision_seed"])
    with torch.device("cpu"):
        tower = Qwen3_5VisionModel(vision_config(spec)).eval()
    return {VISUAL_PREFIX + n: t.detach().to(torch.bfloat16).contiguous() for n, t in tower.state_dict().items()}


def preprocessor_config(spec: dict) -> dict:
    """The image processor the Qwen3.5/3.6 repos name (Qwen2-VL's, mean/std 0.5, pixel budget in pixels)."""
    return {
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "patch_size": spec["vision_patch_size"],
        "temporal_patch_size": spec["vision_temporal_patch_size"],
        "merge_size": spec["vision_spatial_merge_size"],
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    }


def chat_template(spec: dict) -> str:
    if spec["chat_template"] == "qwen3.5":
        from cardforge.core.chat.template import qwen35_template

        return qwen35_template()
    if spec["chat_template"] == "cardforge":
        return qwen36_tokenizer.load_chat_template()
    raise ValueError(f"chat_template={spec['chat_template']!r}: choose qwen3.5 or cardforge")


def build(out_dir: Path, spec: dict) -> None:
    from safetensors.torch import save

    state = {**language_state(spec), **vision_state(spec)}
    state = dict(sorted(state.items()))
    atomic_write_bytes(out_dir / "model.safetensors", save(state, metadata={"format": "pt"}))
    model_config(spec).save_pretrained(out_dir)
    ids = qwen36_tokenizer.token_ids()
    atomic_write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": None,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.95,
        },
    )
    atomic_write_json(out_dir / "preprocessor_config.json", preprocessor_config(spec))
    atomic_write_json(out_dir / "video_preprocessor_config.json",
                      {**preprocessor_config(spec), "video_processor_type": "Qwen3VLVideoProcessor"})
    mtp.write_mtp_tensors(out_dir, tiny_qwen35.init_mtp(spec))
    qwen36_tokenizer.write_tokenizer(out_dir, template=chat_template(spec))
