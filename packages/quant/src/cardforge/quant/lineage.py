"""MTP lineage: every output must carry the head the merge stage wrote, unaltered.

Safetensors outputs keep the head bit-exact, so the per-tensor sha256 must match the manifest. GGUF
tiers requantize it, so there the check is structural: `<arch>.nextn_predict_layers` and one nextn block
with every tensor the head has.
"""

from __future__ import annotations

from pathlib import Path

from cardforge.core.errors import UserError
from cardforge.core.models.mtp import mtp_manifest


class MtpLineageError(UserError):
    pass


def check_safetensors(out_dir: Path, expected: dict) -> dict:
    got = mtp_manifest(out_dir)["tensors"]
    want = expected["tensors"]
    missing = sorted(set(want) - set(got))
    if missing:
        raise MtpLineageError(f"{out_dir}: MTP head missing {len(missing)} tensor(s), e.g. {missing[0]}")
    altered = sorted(n for n in want if got[n]["sha256"] != want[n]["sha256"])
    if altered:
        raise MtpLineageError(f"{out_dir}: MTP tensor(s) altered vs the merge manifest, e.g. {altered[0]}")
    return {"mtp_tensors": len(want), "mtp_check": "sha256-equal"}


def check_gguf(path: Path, expected: dict) -> dict:
    from cardforge.core.llama_cpp import gguf_header

    header = gguf_header(path)
    arch = header["kv"].get("general.architecture")
    n_nextn = header["kv"].get(f"{arch}.nextn_predict_layers", 0)
    if expected["tensors"] and n_nextn != 1:
        raise MtpLineageError(f"{path.name}: {arch}.nextn_predict_layers={n_nextn}, expected 1 (MTP head lost)")
    block = header["kv"].get(f"{arch}.block_count", 0) - 1
    nextn = [n for n in header["tensors"] if n.startswith(f"blk.{block}.")]
    # HF's 15 head tensors map to the nextn block (q_proj's gate is folded, norms kept): require the
    # projection, the attention and the MLP to be there rather than an exact count.
    required = ["nextn.eh_proj", "nextn.enorm", "nextn.hnorm", "attn_q", "attn_k", "attn_v", "attn_output",
                "ffn_gate", "ffn_up", "ffn_down"]
    absent = [r for r in required if not any(f".{r}." in n for n in nextn)]
    if expected["tensors"] and absent:
        raise MtpLineageError(f"{path.name}: nextn block {block} lacks {absent}")
    return {"mtp_tensors": len(nextn), "mtp_check": "nextn-block-present", "nextn_block": block}
