"""NVFP4 fused-group scales on the real layout (tiny-qwen36-vl-mtp): vLLM/SGLang load q/k/v, gate/up,
in_proj_qkv+in_proj_z and in_proj_b+in_proj_a each into ONE GEMM with one weight_scale_2 (the max of the
parts') and one input_scale. Applying that rule to our checkpoint must dequantize every part exactly as it
dequantizes alone; with per-module global scales (the old writer) it does not."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
from safetensors import safe_open

from cardforge.quant import nvfp4
from cardforge.quant.checkpoint import side_files
from cardforge.quant.safetensors_export import export_nvfp4

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 4, "def add(a, b):\n    return a + b\n" * 3,
         "Question: what is 7 * 6? Answer: 42."]


def _load(d):
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for shard in sorted(set(index.values())):
        with safe_open(str(d / shard), "pt") as f:
            out.update({n: f.get_tensor(n) for n in f.keys()})  # noqa: SIM118
    return out


def engine_groups(tensors: dict) -> dict[str, list[str]]:
    """The engines' fusion rule applied to a checkpoint: fused GEMM name -> its quantized parts."""
    groups = defaultdict(list)
    for name in tensors:
        if name.endswith(".weight_scale_2"):
            module = name[: -len(".weight_scale_2")]
            groups[nvfp4.fusion_group(module)].append(module)
    return dict(groups)


def fused_errors(tensors: dict, original: dict) -> dict[str, tuple[float, float]]:
    """part -> (relative weight error dequantized alone, relative error once the engine fused its group)."""
    out = {}
    for parts in engine_groups(tensors).values():
        fused_scale = torch.stack([tensors[f"{p}.weight_scale_2"] for p in parts]).max()  # the engines' rule
        for p in parts:
            packed, block = tensors[f"{p}.weight"], tensors[f"{p}.weight_scale"]
            w = original[f"{p}.weight"].float()
            alone = nvfp4.dequantize(packed, block, tensors[f"{p}.weight_scale_2"])
            fused = nvfp4.dequantize(packed, block, fused_scale)
            out[p] = (float((alone - w).norm() / w.norm()), float((fused - w).norm() / w.norm()))
    return out


@pytest.fixture(scope="module")
def w4a4(tiny_vl_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("nvfp4") / "w4a4"
    info = export_nvfp4(tiny_vl_model_dir, out, "w4a4", calib_texts=TEXTS)
    return out, info


def test_fused_parts_dequantize_as_before_fusion(tiny_vl_model_dir, w4a4):
    out, info = w4a4
    tensors, original = _load(out), _load(tiny_vl_model_dir)
    groups = engine_groups(tensors)
    fused = {g: parts for g, parts in groups.items() if len(parts) > 1}
    # 1 attention layer (qkv) + 4 MLPs (gate_up) + 3 GDN layers x (qkvz, ba) = 11 fused GEMMs
    assert len(fused) == info["fused_groups"] == 11
    assert sum(g.endswith(".in_proj_qkvz") for g in fused) == 3 and sum(g.endswith(".in_proj_ba") for g in fused) == 3
    errors = fused_errors(tensors, original)
    for parts in fused.values():
        scales = {float(tensors[f"{p}.weight_scale_2"]) for p in parts}
        inputs = {float(tensors[f"{p}.input_scale"]) for p in parts}
        assert len(scales) == 1 and len(inputs) == 1, parts  # one global and one input scale per GEMM
        for p in parts:
            alone, after = errors[p]
            assert after == alone and alone < 0.2, (p, alone, after)


def test_per_module_scales_are_what_the_engine_breaks(tiny_vl_model_dir, w4a4):
    """The old writer (each part its own weight_scale_2) on the same weights: the engine's rule rescales the
    parts whose amax is not their group's max."""
    out, _ = w4a4
    original = _load(tiny_vl_model_dir)
    old = {}
    for parts in engine_groups(_load(out)).values():
        for p in parts:
            packed, block, scale2 = nvfp4.quantize(original[f"{p}.weight"])
            old.update({f"{p}.weight": packed, f"{p}.weight_scale": block, f"{p}.weight_scale_2": scale2})
    errors = fused_errors(old, original)
    worst = max(after - alone for alone, after in errors.values())
    rescaled = sum(after != alone for alone, after in errors.values())
    print(f"per-module scales: {rescaled} parts rescaled by the engine, worst extra relative error {worst:.4f}")
    assert rescaled >= 6 and worst > 0.01


def test_shared_scale_bytes_equal_modelopt(tiny_vl_model_dir, w4a4):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    out, _ = w4a4
    tensors, original = _load(out), _load(tiny_vl_model_dir)
    parts = engine_groups(tensors)["model.language_model.layers.0.linear_attn.in_proj_qkvz"]
    shared = tensors[f"{parts[0]}.weight_scale_2"]
    for p in parts:
        ref, ref_block, _ = NVFP4QTensor.quantize(original[f"{p}.weight"].float(), nvfp4.GROUP,
                                                 weights_scaling_factor_2=shared)
        assert torch.equal(tensors[f"{p}.weight"], ref._quantized_data), p
        assert torch.equal(tensors[f"{p}.weight_scale"].view(torch.uint8), ref_block.view(torch.uint8)), p


def test_tower_head_and_files_kept(tiny_vl_model_dir, w4a4):
    out, _ = w4a4
    tensors, original = _load(out), _load(tiny_vl_model_dir)
    for name, t in original.items():
        if name.startswith(("model.visual.", "mtp.", "lm_head.", "model.language_model.embed_tokens.")):
            assert torch.equal(tensors[name], t) and tensors[name].dtype == torch.bfloat16, name
    assert not [n for n in tensors if n.startswith("model.visual.") and "scale" in n]
    config = json.loads((out / "config.json").read_text())
    ignore = set(config["quantization_config"]["ignore"])
    assert {n.removesuffix(".weight") for n in original if n.startswith("model.visual.") and n.endswith(".weight")} <= ignore
    assert config["model_type"] == "qwen3_5" and "vision_config" in config
    assert [f.name for f in side_files(out)] == [f.name for f in side_files(tiny_vl_model_dir)]
    for f in side_files(tiny_vl_model_dir):  # preprocessor configs, tokenizer, template: byte for byte
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert "preprocessor_config.json" in {f.name for f in side_files(out)}
