"""FP8 e4m3 with one scale per 128x128 weight block, in the layout vLLM and SGLang load.

Each quantized Linear `X.weight` [out, in] becomes `X.weight` (float8_e4m3fn) and `X.weight_scale_inv`
[ceil(out/128), ceil(in/128)] float32, where weight ~= fp8 * scale_inv per block (the DeepSeek-V3 naming:
the stored factor multiplies on dequantisation). Activations are quantized dynamically at run time.
"""

from __future__ import annotations

import re

import torch

E4M3_MAX = 448.0


def quantize_block(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, scale_inv) for a 2-D weight; edge blocks may be partial."""
    out_f, in_f = w.shape
    nb_o, nb_i = -(-out_f // block), -(-in_f // block)
    padded = torch.zeros(nb_o * block, nb_i * block, dtype=torch.float32)
    padded[:out_f, :in_f] = w.float()
    tiles = padded.view(nb_o, block, nb_i, block)
    amax = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale_inv = amax / E4M3_MAX
    q = (tiles / scale_inv[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.view(nb_o * block, nb_i * block)[:out_f, :in_f].contiguous(), scale_inv


def dequantize_block(q: torch.Tensor, scale_inv: torch.Tensor, block: int = 128) -> torch.Tensor:
    out_f, in_f = q.shape
    s = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:out_f, :in_f]
    return q.float() * s


# Never quantized: embeddings, lm_head, norms, conv1d, GDN scalars, the vision tower of a VL checkpoint
# (model.visual.*: the card keeps vision in high precision) and the MTP head (kept bit-exact so its lineage
# can be checked by sha256). GDN input projections whose output width is not a multiple of
# the block (in_proj_a/b: one row per value head) are listed per model by `ignored_modules`.
ALWAYS_SKIP = re.compile(r"(embed_tokens|lm_head|norm|conv1d|A_log|dt_bias|^mtp\.|^model\.visual\.)")


def is_candidate(name: str, tensor: torch.Tensor) -> bool:
    return name.endswith(".weight") and tensor.dim() == 2 and not ALWAYS_SKIP.search(name)


def ignored_modules(names_shapes: dict[str, tuple[int, ...]], block: int = 128) -> list[str]:
    """Every module with a `.weight` that stays BF16, by the name vLLM / SGLang / transformers match it:
    embeddings, lm_head, norms (RMSNorm, GDN's gated norm, q/k norms), conv1d, the MTP head, every module of
    the vision tower (model.visual.*, its Conv3d patch embedding included), and Linear
    layers with a width off the block grid. GDN's A_log / dt_bias are parameters of the linear_attn module
    itself, not modules: listing `...linear_attn` would un-quantize all of its projections, so they are not."""
    out = []
    for name, shape in names_shapes.items():
        if not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        if len(shape) != 2 or ALWAYS_SKIP.search(name) or shape[0] % block or shape[1] % block:
            out.append(module)
    return sorted(out)


def quantization_config(ignored: list[str], block: int = 128) -> dict:
    # vLLM reads `ignored_layers`; transformers' FineGrainedFP8Config reads `modules_to_not_convert`.
    return {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [block, block],
        "ignored_layers": ignored,
        "modules_to_not_convert": ignored,
    }
