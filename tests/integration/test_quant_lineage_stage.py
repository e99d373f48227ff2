"""MTP lineage against the real converter's output and through the quant CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cardforge.core.models.mtp import mtp_manifest, read_mtp_tensors, write_mtp_tensors
from cardforge.quant import lineage


def test_the_converters_gguf_matches_the_manifest_by_name_shape_and_value(tiny_gguf, tiny_model_dir):
    manifest, head = mtp_manifest(tiny_model_dir), read_mtp_tensors(tiny_model_dir)
    res = lineage.check_gguf(tiny_gguf, manifest, head)
    # every one of the 15 HF tensors found under the converter's name, no other tensor in the nextn block,
    # the BF16 matrices bit-equal, the norms equal to 1 + w
    assert res["mtp_tensors"] == len(manifest["tensors"]) == 15
    assert res["mtp_check"] == "nextn-names-shapes-values" and res["mtp_max_rel_err"] < 1e-2
    # another head with the same names and shapes (e.g. the grafted one instead of the retrained one) fails
    g = torch.Generator().manual_seed(7)
    other = {n: (t.float() + 0.5 * t.float().std() * torch.randn(t.shape, generator=g)).to(t.dtype)
             for n, t in head.items()}
    with pytest.raises(lineage.MtpLineageError, match="altered MTP head"):
        lineage.check_gguf(tiny_gguf, manifest, other)
    # a manifest with one more tensor than the file holds
    more = {"tensors": {**manifest["tensors"], "mtp.layers.1.mlp.up_proj.weight": {"shape": [512, 256]}}}
    with pytest.raises(lineage.MtpLineageError, match="nextn_predict_layers=1, expected 2"):
        lineage.check_gguf(tiny_gguf, more)


def _small_checkpoint(d: Path, tiny_model_dir: Path) -> Path:
    d.mkdir(parents=True)
    shutil.copy(tiny_model_dir / "config.json", d / "config.json")
    save_file({"model.norm.weight": torch.zeros(256, dtype=torch.bfloat16)}, str(d / "model.safetensors"))
    write_mtp_tensors(d, read_mtp_tensors(tiny_model_dir))
    return d


def test_quant_refuses_a_merged_model_whose_head_changed_after_the_merge(tmp_path, tiny_model_dir):
    model = _small_checkpoint(tmp_path / "merge" / "model", tiny_model_dir)
    (tmp_path / "merge" / "mtp_manifest.merged.json").write_text(json.dumps(mtp_manifest(model)))
    head = read_mtp_tensors(model)
    head["mtp.fc.weight"] = head["mtp.fc.weight"] * 2
    (model / "model-mtp.safetensors").unlink()
    write_mtp_tensors(model, head)
    proc = subprocess.run([sys.executable, "-m", "cardforge.quant", f"paths.outputs={tmp_path}", "mtp.enabled=false"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"cardforge quant: error: {model}: the MTP head differs from the stored manifest "
                           f"{tmp_path / 'merge' / 'mtp_manifest.merged.json'}: 1 altered (e.g. mtp.fc.weight)")
    assert not (tmp_path / "quant" / "gguf").exists()  # refused before any work
