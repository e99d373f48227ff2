"""MTP lineage checks on small synthetic files: GGUF nextn blocks, safetensors heads, the stored manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cardforge.core.errors import UserError
from cardforge.core.models.mtp import mtp_manifest, mtp_shapes, read_mtp_tensors, write_mtp_tensors
from cardforge.quant import lineage

# What llama.cpp's converter (the pinned release) writes for the Qwen3.5 head, read off a converted tiny model:
# the first MTP block is num_hidden_layers (here 2), tensor shapes are reversed (ggml order), norms become 1 + w.
CONVERTER_NAMES = {
    "mtp.fc.weight": "blk.2.nextn.eh_proj.weight",
    "mtp.pre_fc_norm_embedding.weight": "blk.2.nextn.enorm.weight",
    "mtp.pre_fc_norm_hidden.weight": "blk.2.nextn.hnorm.weight",
    "mtp.norm.weight": "blk.2.nextn.shared_head_norm.weight",
    "mtp.layers.0.input_layernorm.weight": "blk.2.attn_norm.weight",
    "mtp.layers.0.post_attention_layernorm.weight": "blk.2.post_attention_norm.weight",
    "mtp.layers.0.self_attn.q_proj.weight": "blk.2.attn_q.weight",
    "mtp.layers.0.self_attn.k_proj.weight": "blk.2.attn_k.weight",
    "mtp.layers.0.self_attn.v_proj.weight": "blk.2.attn_v.weight",
    "mtp.layers.0.self_attn.o_proj.weight": "blk.2.attn_output.weight",
    "mtp.layers.0.self_attn.q_norm.weight": "blk.2.attn_q_norm.weight",
    "mtp.layers.0.self_attn.k_norm.weight": "blk.2.attn_k_norm.weight",
    "mtp.layers.0.mlp.gate_proj.weight": "blk.2.ffn_gate.weight",
    "mtp.layers.0.mlp.up_proj.weight": "blk.2.ffn_up.weight",
    "mtp.layers.0.mlp.down_proj.weight": "blk.2.ffn_down.weight",
}


def make_head(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = mtp_shapes(hidden=64, intermediate=128, n_heads=2, n_kv_heads=1, head_dim=32)
    return {n: (torch.randn(*s, generator=g) * (0.05 if len(s) == 1 else 0.02)).to(torch.bfloat16)
            for n, s in shapes.items()}


def write_model(d: Path, head: dict[str, torch.Tensor]) -> Path:
    d.mkdir(parents=True)
    save_file({"model.norm.weight": torch.zeros(64, dtype=torch.bfloat16)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen3_5ForCausalLM"]}))
    write_mtp_tensors(d, head)
    return d


def manifest_of(head: dict[str, torch.Tensor], tmp: Path) -> dict:
    return mtp_manifest(write_model(tmp / "ref", head))


def write_gguf(path: Path, head: dict[str, torch.Tensor], *, nextn_layers: int = 1, drop: int = 0,
               qtype: str = "BF16", plus_one: bool = True, extra: bool = False, names=None, shape=None) -> Path:
    """A qwen35 GGUF with 2 trunk blocks + the head as the converter lays it out (or damaged as asked)."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFWriter
    from gguf.quants import quantize

    w = GGUFWriter(str(path), "qwen35")
    w.add_block_count(2 + nextn_layers)
    if nextn_layers:
        w.add_uint32("qwen35.nextn_predict_layers", nextn_layers)
    w.add_tensor("blk.0.ffn_up.weight", np.ones((4, 32), dtype=np.float32))
    items = list(head.items())[: len(head) - drop]
    for hf, t in items:
        gname = (names or CONVERTER_NAMES)[hf]
        if shape is not None:
            w.add_tensor(gname, np.zeros(shape, dtype=np.float32))
        elif t.dim() == 1:
            w.add_tensor(gname, (t.float() + (1 if plus_one else 0)).numpy())
        elif qtype == "BF16":
            w.add_tensor(gname, t.view(torch.int16).numpy().view(np.uint16), raw_shape=tuple(t.shape), raw_dtype=T.BF16)
        else:
            q = quantize(t.float().numpy(), T[qtype])
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=T[qtype])
    if extra:
        w.add_tensor("blk.2.ffn_extra.weight", np.ones((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture()
def head():
    return make_head()


@pytest.fixture()
def manifest(head, tmp_path):
    return manifest_of(head, tmp_path)


def test_gguf_name_follows_the_converter():
    for hf, gname in CONVERTER_NAMES.items():
        assert lineage.gguf_name(hf, 2) == gname
    assert lineage.gguf_name("mtp.layers.1.mlp.up_proj.weight", 2) == "blk.3.ffn_up.weight"
    assert lineage.gguf_name("mtp.something_new.weight", 2) is None


def test_a_complete_head_passes_with_values(head, manifest, tmp_path):
    res = lineage.check_gguf(write_gguf(tmp_path / "ok.gguf", head), manifest, head)
    assert res["mtp_tensors"] == 15 and res["nextn_block"] == 2
    assert res["mtp_check"] == "nextn-names-shapes-values" and res["mtp_max_rel_err"] < 1e-2
    # without the source tensors: names, count and shapes only
    assert lineage.check_gguf(tmp_path / "ok.gguf", manifest)["mtp_check"] == "nextn-names-shapes"


def test_a_gguf_without_the_head_fails(head, manifest, tmp_path):
    path = write_gguf(tmp_path / "nohead.gguf", head, nextn_layers=0, drop=len(head))
    with pytest.raises(lineage.MtpLineageError, match="nextn_predict_layers=0, expected 1"):
        lineage.check_gguf(path, manifest)
    # the key kept but the tensors gone
    path = write_gguf(tmp_path / "keyonly.gguf", head, drop=len(head))
    with pytest.raises(lineage.MtpLineageError, match="incomplete, 15 of the manifest's 15"):
        lineage.check_gguf(path, manifest)


def test_a_partial_head_fails(head, manifest, tmp_path):
    with pytest.raises(lineage.MtpLineageError, match="incomplete, 5 of the manifest's 15"):
        lineage.check_gguf(write_gguf(tmp_path / "partial.gguf", head, drop=5), manifest)


def test_ten_small_nextn_tensors_do_not_pass_for_a_fifteen_tensor_head(head, manifest, tmp_path):
    # the audit's case: 10 tensors of shape 4x4 under the nextn names once passed the structural check
    ten = dict(list(head.items())[:10])
    path = write_gguf(tmp_path / "ten.gguf", ten, shape=(4, 4))
    with pytest.raises(lineage.MtpLineageError, match="incomplete"):
        lineage.check_gguf(path, manifest)
    path = write_gguf(tmp_path / "fifteen.gguf", head, shape=(4, 4))
    with pytest.raises(lineage.MtpLineageError, match=r"has shape \[4, 4\]"):
        lineage.check_gguf(path, manifest)


def test_an_extra_tensor_in_the_nextn_block_fails(head, manifest, tmp_path):
    with pytest.raises(lineage.MtpLineageError, match="does not list, e.g. blk.2.ffn_extra.weight"):
        lineage.check_gguf(write_gguf(tmp_path / "extra.gguf", head, extra=True), manifest)


def test_altered_values_fail(head, manifest, tmp_path):
    # one BF16 matrix element changed: the converter copies BF16 matrices bit for bit
    bad = dict(head)
    bad["mtp.layers.0.mlp.up_proj.weight"] = bad["mtp.layers.0.mlp.up_proj.weight"].clone()
    bad["mtp.layers.0.mlp.up_proj.weight"][3, 5] += 0.5
    path = write_gguf(tmp_path / "bf16.gguf", bad)
    with pytest.raises(lineage.MtpLineageError, match="blk.2.ffn_up.weight differs from the manifest's"):
        lineage.check_gguf(path, manifest, head)
    # norms as the source stores them (w, not the converter's 1 + w)
    with pytest.raises(lineage.MtpLineageError, match=r"\(F32\) is .* away"):
        lineage.check_gguf(write_gguf(tmp_path / "norm.gguf", head, plus_one=False), manifest, head)


def test_quantized_head_within_bound_passes_another_head_fails(head, manifest, tmp_path):
    path = write_gguf(tmp_path / "q8.gguf", head, qtype="Q8_0")
    res = lineage.check_gguf(path, manifest, head)
    assert 0 < res["mtp_max_rel_err"] < lineage.REL_TOL["Q8_0"]
    other = make_head(seed=1)  # same names and shapes, different values: e.g. the grafted head, not the retrained
    with pytest.raises(lineage.MtpLineageError, match=r"\(Q8_0\) is .* away .*altered MTP head"):
        lineage.check_gguf(write_gguf(tmp_path / "other.gguf", other, qtype="Q8_0"), manifest, head)


def test_no_head_expected_is_reported_as_none(tmp_path, head):
    path = write_gguf(tmp_path / "x.gguf", head, nextn_layers=0, drop=len(head))
    assert lineage.check_gguf(path, {"tensors": {}}) == {"mtp_tensors": 0, "mtp_check": "none"}


def test_safetensors_with_an_altered_missing_or_extra_mtp_tensor_fails(head, manifest, tmp_path):
    d = write_model(tmp_path / "out", head)
    assert lineage.check_safetensors(d, manifest) == {"mtp_tensors": 15, "mtp_check": "sha256-equal"}
    for change, match in [("alter", "altered vs the merge manifest, e.g. mtp.norm.weight"),
                          ("drop", "missing 1 tensor"), ("add", "does not list, e.g. mtp.fc.weight_scale_inv")]:
        t = read_mtp_tensors(d)
        if change == "alter":
            t["mtp.norm.weight"] = t["mtp.norm.weight"] + 1
        elif change == "drop":
            del t["mtp.fc.weight"]
        else:
            t["mtp.fc.weight_scale_inv"] = torch.ones(1)
        (d / "model-mtp.safetensors").unlink()
        write_mtp_tensors(d, t)
        with pytest.raises(lineage.MtpLineageError, match=match):
            lineage.check_safetensors(d, manifest)
        (d / "model-mtp.safetensors").unlink()
        write_mtp_tensors(d, head)


# --- the stored manifest: the quant stage's reference ---


def _cfg(outputs: Path, *extra: str):
    from cardforge.core.config.compose import compose

    return compose("quant", [f"paths.outputs={outputs}", "mtp.enabled=false", *extra])


def merge_layout(tmp_path: Path, head) -> Path:
    """<outputs>/merge/model + <outputs>/merge/mtp_manifest.merged.json, as the merge stage leaves them."""
    model = write_model(tmp_path / "merge" / "model", head)
    (tmp_path / "merge" / "mtp_manifest.merged.json").write_text(json.dumps(mtp_manifest(model)))
    return model


def test_the_reference_is_the_stored_merge_manifest(head, tmp_path):
    from cardforge.quant.stage import source_dir, source_head

    cfg = _cfg(tmp_path)
    model = merge_layout(tmp_path, head)
    assert source_dir(cfg) == model
    ref = source_head(cfg, model)
    assert ref.origin == str(tmp_path / "merge" / "mtp_manifest.merged.json")
    assert ref.manifest == json.loads((tmp_path / "merge" / "mtp_manifest.merged.json").read_text())
    assert set(ref.tensors) == set(head)


def test_a_source_whose_head_differs_from_the_merge_manifest_fails(head, tmp_path):
    from cardforge.quant.stage import source_head

    cfg = _cfg(tmp_path)
    model = merge_layout(tmp_path, head)
    tampered = dict(head)
    tampered["mtp.layers.0.self_attn.o_proj.weight"] = torch.zeros_like(head["mtp.layers.0.self_attn.o_proj.weight"])
    (model / "model-mtp.safetensors").unlink()
    write_mtp_tensors(model, tampered)
    with pytest.raises(lineage.MtpLineageError) as e:
        source_head(cfg, model)
    msg = str(e.value)
    assert "\n" not in msg
    assert "differs from the stored manifest" in msg and "1 altered (e.g. mtp.layers.0.self_attn.o_proj.weight)" in msg
    # a head that lost a tensor since the merge
    (model / "model-mtp.safetensors").unlink()
    write_mtp_tensors(model, {k: v for k, v in head.items() if k != "mtp.fc.weight"})
    with pytest.raises(lineage.MtpLineageError, match=r"1 missing \(e.g. mtp.fc.weight\)"):
        source_head(cfg, model)


def test_the_mtp_stage_checkpoint_uses_its_retrained_manifest(head, tmp_path):
    from cardforge.quant.stage import source_head

    model = write_model(tmp_path / "mtp" / "model", head)
    (model / "mtp_manifest.retrained.json").write_text(json.dumps(mtp_manifest(model)))
    # the merge stage's (grafted) manifest one level up must not be taken for it
    (tmp_path / "mtp" / "mtp_manifest.merged.json").write_text(json.dumps(manifest_of(make_head(3), tmp_path)))
    assert source_head(_cfg(tmp_path), model).origin == str(model / "mtp_manifest.retrained.json")


def test_a_pipeline_source_without_its_stored_manifest_fails(head, tmp_path):
    from cardforge.quant.stage import source_head

    model = merge_layout(tmp_path, head)
    (tmp_path / "merge" / "mtp_manifest.merged.json").unlink()
    with pytest.raises(UserError, match="no stored MTP manifest for .* re-run that stage"):
        source_head(_cfg(tmp_path), model)
    # an explicit quant.source that no stage of ours wrote is its own reference
    ref = source_head(_cfg(tmp_path, f"quant.source={model}"), model)
    assert ref.origin.startswith("computed from") and ref.manifest == mtp_manifest(model)


def test_an_unreadable_stored_manifest_fails_with_one_line(head, tmp_path):
    from cardforge.quant.stage import source_head

    model = merge_layout(tmp_path, head)
    (tmp_path / "merge" / "mtp_manifest.merged.json").write_text("{not json")
    with pytest.raises(lineage.MtpLineageError, match="cannot read the MTP manifest"):
        source_head(_cfg(tmp_path), model)
