"""A derived checkpoint (the merge's, quant's FP8/NVFP4) carries its source's non-weight files byte for byte, and
no weight file of another format. Before: everything but `*.safetensors` was copied, so a base that also ships
`pytorch_model.bin` (or a `.pt`, `.gguf`, `training_args.bin`) gave a merged folder whose `.bin` is the UN-merged
base, shipped by release next to the distilled safetensors (and loaded by any tool that prefers .bin)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from cardforge.quant.checkpoint import side_files
from cardforge.train.merge.stage import merge_adapter


def _base(d):
    d.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4, dtype=torch.bfloat16),
               "model.norm.weight": torch.ones(4, dtype=torch.bfloat16)}, str(d / "model.safetensors"))
    (d / "config.json").write_text('{"model_type": "x"}')
    (d / "tokenizer.json").write_text("{}")
    (d / "preprocessor_config.json").write_text("{}")
    for stale in ("pytorch_model.bin", "training_args.bin", "consolidated.pt", "model-Q4_K_M.gguf"):
        (d / stale).write_bytes(b"old weights")
    return d


def test_merge_copies_side_files_but_no_other_weight_format(tmp_path):
    base = _base(tmp_path / "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(2, 4),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.ones(4, 2)},
              str(adapter / "adapter_model.safetensors"))
    out = merge_adapter(base, adapter, tmp_path / "merged")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json",
                                                     "tokenizer.json"]


def test_quant_side_files_leave_other_weight_formats_out(tmp_path):
    base = _base(tmp_path / "base")
    assert [p.name for p in side_files(base)] == ["preprocessor_config.json", "tokenizer.json"]
