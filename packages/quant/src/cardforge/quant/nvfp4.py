"""NVFP4 in the ModelOpt checkpoint layout (written by us; see docs/quantization.md for why not modelopt).

Per quantized Linear `X`:
  X.weight          uint8 [out, in/2]   two e2m1 codes per byte, the LOW nibble holds the even element
  X.weight_scale    float8_e4m3fn [out, in/16]   one scale per 16 consecutive input elements
  X.weight_scale_2  float32 scalar      global scale = amax(W) / (6 * 448)
  X.input_scale     float32 scalar      W4A4 only: amax(activations seen in calibration) / (6 * 448)
so that W ~= e2m1(code) * float(weight_scale) * weight_scale_2. `hf_quant_config.json` names the
algorithm (NVFP4 for W4A4, W4A16_NVFP4 for weight-only) and the modules left in BF16.

Fused groups: vLLM and SGLang load q/k/v into one qkv_proj GEMM, gate/up into gate_up_proj and, for Qwen3.5 /
Qwen3-Next, the GDN's in_proj_qkv + in_proj_z into in_proj_qkvz and in_proj_b + in_proj_a into in_proj_ba
(their packed_modules_mapping); such a GEMM has ONE weight_scale_2 (and one input_scale): the max of the
parts'. A part quantized with its own smaller global scale is then dequantized with the group's larger one,
i.e. scaled by max/own (up to 8.9% on the tiny W4A4 checkpoint). So, as ModelOpt's export does
(preprocess_linear_fusion), the partners share one global scale from the max of their amax and are quantized
with it, and share the max of their input amax: the engine's fused dequantization is then exact per part.
"""

from __future__ import annotations

import re

import torch

GROUP = 16
E2M1_MAX, E4M3_MAX = 6.0, 448.0
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_MIDPOINTS = (E2M1_VALUES[1:] + E2M1_VALUES[:-1]) / 2

# The checkpoint's language model: model.layers.* (text-only) or model.language_model.layers.* (the VL layout).
LAYERS = r"^model\.(?:language_model\.)?layers\.\d+\."
# Which Linear modules each tier quantizes (the card: W4A16 = MLP only; W4A4 = MLP + attention + GDN
# projections, conv1d kept BF16). The MTP head is never quantized: it stays bit-exact for lineage checks.
TIERS = {
    "w4a16": re.compile(LAYERS + r"mlp\.(gate|up|down)_proj$"),
    "w4a4": re.compile(
        LAYERS + r"(mlp\.(gate|up|down)_proj|self_attn\.[qkvo]_proj"
        r"|linear_attn\.(in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|out_proj))$"
    ),
}
# The engines' fused GEMMs (vLLM/SGLang packed_modules_mapping for qwen3_5 / qwen3_next / llama): parts of one
# parent module that share a weight_scale_2 and an input_scale once loaded.
FUSED_GROUPS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj"),
                "in_proj_qkvz": ("in_proj_qkv", "in_proj_z"), "in_proj_ba": ("in_proj_b", "in_proj_a")}


def fusion_group(module: str) -> str:
    """The engine's name for the GEMM `module` is loaded into: `<parent>.qkv_proj` for `<parent>.k_proj`, ...;
    a module that is fused with nothing is its own group."""
    parent, _, leaf = module.rpartition(".")
    for fused, parts in FUSED_GROUPS.items():
        if leaf in parts:
            return f"{parent}.{fused}"
    return module
QUANT_ALGO = {"w4a16": "W4A16_NVFP4", "w4a4": "NVFP4"}


# midpoints between an odd code and the next even one: a tie there rounds up (to the even code)
_TIES_UP = _MIDPOINTS[[1, 3, 5]]


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest e2m1 value, ties to even (as the hardware cast and ModelOpt do; bf16 weights hit
    exact ties); returns 4-bit codes (bit 3 = sign) as uint8."""
    mag_f = x.abs().float()
    mag = torch.bucketize(mag_f, _MIDPOINTS)  # a tie lands on the lower code ...
    mag = mag + (mag_f.unsqueeze(-1) == _TIES_UP).any(-1)  # ... and moves up where the upper one is even
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


def weight_global_scale(amax: float | torch.Tensor) -> torch.Tensor:
    """weight_scale_2 for a weight (or a fused group) whose largest |value| is `amax`."""
    return (torch.as_tensor(amax, dtype=torch.float32).clamp(min=1e-12) / (E2M1_MAX * E4M3_MAX)).reshape(())


def quantize(w: torch.Tensor, global_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed weight, per-16 e4m3 scales, fp32 global scale) for a 2-D weight whose width % 16 == 0.
    `global_scale`: the fused group's (weight_global_scale of the partners' max amax); default: this weight's."""
    out_f, in_f = w.shape
    if in_f % GROUP:
        raise ValueError(f"NVFP4 needs an input width divisible by {GROUP}, got {in_f}")
    w = w.float()
    if global_scale is None:
        global_scale = weight_global_scale(w.abs().amax())
    global_scale = global_scale.float().reshape(())
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
