"""FP8 block-128 and NVFP4 arithmetic: layouts, nibble order, and bounded dequantization error."""

from __future__ import annotations

import pytest
import torch

from cardforge.quant import fp8, nvfp4


@pytest.fixture()
def weight():
    torch.manual_seed(0)
    w = torch.randn(384, 320) * 0.02
    w[5, 7] = 0.9  # an outlier: only its own block's scale may suffer
    return w


def test_fp8_block_layout_and_error_bound(weight):
    q, scale_inv = fp8.quantize_block(weight, 128)
    assert q.dtype == torch.float8_e4m3fn and q.shape == weight.shape
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == (3, 3)  # ceil(384/128), ceil(320/128)
    deq = fp8.dequantize_block(q, scale_inv, 128)
    # e4m3 keeps 3 mantissa bits: the error is at most 2^-4 of the block's largest magnitude
    for bo in range(3):
        for bi in range(3):
            blk = (slice(bo * 128, (bo + 1) * 128), slice(bi * 128, (bi + 1) * 128))
            amax = weight[blk].abs().max()
            assert (deq[blk] - weight[blk]).abs().max() <= amax / 16 + 1e-7
            assert scale_inv[bo, bi] == pytest.approx(float(amax) / 448, rel=1e-6)
    # the outlier sits in block (0, 0); other blocks keep their own fine scale
    assert scale_inv[0, 0] > 10 * scale_inv[1, 1]


def test_fp8_ignores_layers_off_the_block_grid_norms_conv1d_and_embeddings():
    shapes = {"model.layers.0.linear_attn.in_proj_a.weight": (4, 256),
              "model.layers.0.linear_attn.in_proj_qkv.weight": (1024, 256),
              "model.layers.0.linear_attn.conv1d.weight": (1024, 1, 4),
              "model.layers.0.linear_attn.norm.weight": (128,),
              "model.layers.0.linear_attn.A_log": (4,), "model.layers.0.linear_attn.dt_bias": (4,),
              "model.layers.0.input_layernorm.weight": (256,),
              "model.layers.0.post_attention_layernorm.weight": (256,),
              "model.layers.3.self_attn.q_norm.weight": (128,), "model.norm.weight": (256,),
              "model.embed_tokens.weight": (248320, 256), "lm_head.weight": (248320, 256),
              "mtp.fc.weight": (256, 512), "mtp.norm.weight": (256,),
              "model.layers.3.self_attn.k_proj.weight": (128, 256)}
    ignored = fp8.ignored_modules(shapes, 128)
    assert ignored == ["lm_head", "model.embed_tokens", "model.layers.0.input_layernorm",
                       "model.layers.0.linear_attn.conv1d", "model.layers.0.linear_attn.in_proj_a",
                       "model.layers.0.linear_attn.norm", "model.layers.0.post_attention_layernorm",
                       "model.layers.3.self_attn.q_norm", "model.norm", "mtp.fc", "mtp.norm"]
    # A_log / dt_bias belong to the linear_attn module itself: naming it would skip all its projections
    assert "model.layers.0.linear_attn" not in ignored
    cfg = fp8.quantization_config(ignored)
    assert cfg["quant_method"] == "fp8" and cfg["weight_block_size"] == [128, 128]
    assert cfg["activation_scheme"] == "dynamic" and cfg["ignored_layers"] == ignored
    assert cfg["modules_to_not_convert"] == ignored


def _tiny_checkpoint(d):
    import json

    from safetensors.torch import save_file

    d.mkdir()
    torch.manual_seed(0)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(256, 128).to(torch.bfloat16),
               "model.layers.0.linear_attn.in_proj_a.weight": torch.randn(4, 128).to(torch.bfloat16),
               "model.layers.0.linear_attn.conv1d.weight": torch.randn(256, 1, 4).to(torch.bfloat16),
               "model.layers.0.input_layernorm.weight": torch.zeros(128, dtype=torch.bfloat16),
               "model.norm.weight": torch.zeros(128, dtype=torch.bfloat16),
               "model.embed_tokens.weight": torch.randn(64, 128).to(torch.bfloat16)},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen3_5ForCausalLM"]}))
    return d


def test_fp8_export_lists_norms_and_conv1d_as_vllm_reads_them(tmp_path):
    import json

    from cardforge.quant.safetensors_export import export_fp8

    export_fp8(_tiny_checkpoint(tmp_path / "src"), tmp_path / "fp8")
    qc = json.loads((tmp_path / "fp8" / "config.json").read_text())["quantization_config"]
    assert qc["ignored_layers"] == ["model.embed_tokens", "model.layers.0.input_layernorm",
                                    "model.layers.0.linear_attn.conv1d", "model.layers.0.linear_attn.in_proj_a",
                                    "model.norm"]


def test_nvfp4_export_lists_conv1d_as_excluded(tmp_path):
    import json

    from cardforge.quant.safetensors_export import export_nvfp4

    export_nvfp4(_tiny_checkpoint(tmp_path / "src"), tmp_path / "nv", "w4a16")
    exclude = json.loads((tmp_path / "nv" / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
    assert "model.layers.0.linear_attn.conv1d" in exclude and "model.embed_tokens" in exclude
    assert "model.layers.0.mlp.up_proj" not in exclude
    # config.json: the flat form (quant_algo at the top), where vLLM / SGLang read the BF16 modules from `ignore`
    flat = json.loads((tmp_path / "nv" / "config.json").read_text())["quantization_config"]
    assert flat["quant_method"] == "modelopt" and flat["quant_algo"] == "W4A16_NVFP4"
    assert flat["ignore"] == exclude == flat["exclude_modules"]


def test_e2m1_codes_and_low_nibble_holds_the_even_element():
    vals = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.5, -6.0])
    codes = nvfp4.e2m1_encode(vals)
    assert codes.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 15]
    assert torch.equal(nvfp4.e2m1_decode(codes), vals)
    packed = nvfp4.pack(torch.tensor([[1, 7, 9, 15]], dtype=torch.uint8))
    assert packed.tolist() == [[0x71, 0xF9]]  # even element in bits 0-3, odd in bits 4-7
    assert nvfp4.unpack(packed).tolist() == [[1, 7, 9, 15]]
    # rounding goes to the nearest representable value
    assert nvfp4.e2m1_decode(nvfp4.e2m1_encode(torch.tensor([0.7, 2.6, 5.2, -4.9]))).tolist() == [0.5, 3.0, 6.0, -4.0]


def test_nvfp4_layout_and_error_bound(weight):
    packed, block_scale, global_scale = nvfp4.quantize(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (384, 160)
    assert block_scale.dtype == torch.float8_e4m3fn and block_scale.shape == (384, 20)
    assert global_scale.dtype == torch.float32 and global_scale.dim() == 0
    assert float(global_scale) == pytest.approx(float(weight.abs().max()) / (6 * 448), rel=1e-6)
    deq = nvfp4.dequantize(packed, block_scale, global_scale)
    groups_w = weight.view(384, 20, 16)
    err = (deq.view(384, 20, 16) - groups_w).abs().amax(-1)
    # half of e2m1's widest step (4 -> 6) on the group's scale, plus the e4m3 rounding of that scale
    bound = groups_w.abs().amax(-1) * (1 / 6 + 1 / 16) + 1e-6
    assert (err <= bound).all()
    rel = (deq - weight).norm() / weight.norm()
    assert 0.05 < rel < 0.15  # 4-bit: clearly lossy, clearly not garbage


def test_nvfp4_rejects_widths_off_the_group():
    with pytest.raises(ValueError, match="divisible by 16"):
        nvfp4.quantize(torch.randn(8, 24))


def test_tier_module_selection_follows_the_card():
    w4a16, w4a4 = nvfp4.TIERS["w4a16"], nvfp4.TIERS["w4a4"]
    mlp = "model.layers.2.mlp.down_proj"
    attn = "model.layers.3.self_attn.q_proj"
    gdn = "model.layers.0.linear_attn.in_proj_qkv"
    for name, in16, in4 in [(mlp, True, True), (attn, False, True), (gdn, False, True),
                            ("model.layers.0.linear_attn.conv1d", False, False), ("lm_head", False, False),
                            ("mtp.layers.0.mlp.down_proj", False, False)]:
        assert bool(w4a16.match(name)) is in16, name
        assert bool(w4a4.match(name)) is in4, name


def test_nvfp4_bytes_equal_nvidia_modelopt_reference():
    # NVIDIA's own NVFP4 quantizer (nvidia-modelopt, CPU path) is the reference for the layout we write.
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    torch.manual_seed(1)
    for shape in [(64, 64), (512, 256), (384, 320)]:
        w = torch.randn(*shape) * 0.02
        w[3, 5] = 0.5
        ref, ref_scale, ref_global = NVFP4QTensor.quantize(w, nvfp4.GROUP)
        packed, scale, global_scale = nvfp4.quantize(w)
        assert torch.equal(packed, ref._quantized_data), shape
        assert torch.equal(scale.view(torch.uint8), ref_scale.view(torch.uint8)), shape
        assert float(global_scale) == float(ref_global)
