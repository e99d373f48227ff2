"""NVFP4 in the ModelOpt checkpoint layout (written by us; see docs/quantization.md for why not modelopt).

Per quantized Linear `X`:
  X.weight          uint8 [out, in/2]   two e2m1 codes per byte, the LOW nibble holds the even element
  X.weight_scale    float8_e4m3fn [out, in/16]   one scale per 16 consecutive input elements
  X.weight_scale_2  float32 scalar      global scale = amax(W) / (6 * 448)
  X.input_scale     float32 scalar      W4A4 only: amax(activations seen in calibration) / (6 * 448)
so that W ~= e2m1(code) * float(weight_scale) * weight_scale_2. `hf_quant_config.json` names the
algorithm (NVFP4 for W4A4, W4A16_NVFP4 for weight-only) and the modules left in BF16.
"""

from __future__ import annotations

import re

import torch

GROUP = 16
E2M1_MAX, E4M3_MAX = 6.0, 448.0
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_MIDPOINTS = (E2M1_VALUES[1:] + E2M1_VALUES[:-1]) / 2

# Which Linear modules each tier quantizes (the card: W4A16 = MLP only; W4A4 = MLP + attention + GDN
# projections, conv1d kept BF16). The MTP head is never quantized: it stays bit-exact for lineage checks.
TIERS = {
    "w4a16": re.compile(r"^model\.layers\.\d+\.mlp\.(gate|up|down)_proj$"),
    "w4a4": re.compile(
        r"^model\.layers\.\d+\.(mlp\.(gate|up|down)_proj|self_attn\.[qkvo]_proj"
        r"|linear_attn\.(in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|out_proj))$"
    ),
}
QUANT_ALGO = {"w4a16": "W4A16_NVFP4", "w4a4": "NVFP4"}


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest e2m1 value; returns 4-bit codes (bit 3 = sign) as uint8."""
    mag = torch.bucketize(x.abs().float(), _MIDPOINTS)
    sign = (x < 0).to(torch.uint8) << 3
    return mag.to(torch.uint8) | sign


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    mag = E2M1_VALUES[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def pack(codes: torch.Tensor) -> torch.Tensor:
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed weight, per-16 e4m3 scales, fp32 global scale) for a 2-D weight whose width % 16 == 0."""
    out_f, in_f = w.shape
    if in_f % GROUP:
        raise ValueError(f"NVFP4 needs an input width divisible by {GROUP}, got {in_f}")
    w = w.float()
    global_scale = (w.abs().amax().clamp(min=1e-12) / (E2M1_MAX * E4M3_MAX)).reshape(())
    groups = w.view(out_f, in_f // GROUP, GROUP)
    block_scale = (groups.abs().amax(-1) / E2M1_MAX / global_scale).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    denom = (block_scale.float() * global_scale).clamp(min=1e-30)[..., None]
    codes = e2m1_encode(groups / denom).view(out_f, in_f)
    return pack(codes), block_scale, global_scale


def dequantize(packed: torch.Tensor, block_scale: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    vals = e2m1_decode(unpack(packed))
    out_f, in_f = vals.shape
    scale = block_scale.float().repeat_interleave(GROUP, dim=1) * global_scale.float()
    return (vals * scale).view(out_f, in_f)


def input_scale(act_amax: float) -> torch.Tensor:
    return torch.tensor(max(act_amax, 1e-12) / (E2M1_MAX * E4M3_MAX), dtype=torch.float32)


def hf_quant_config(tier: str, exclude: list[str], producer_version: str) -> dict:
    return {
        "producer": {"name": "cardforge", "version": producer_version},
        "quantization": {"quant_algo": QUANT_ALGO[tier], "kv_cache_quant_algo": None, "group_size": GROUP,
                         "exclude_modules": exclude},
    }
