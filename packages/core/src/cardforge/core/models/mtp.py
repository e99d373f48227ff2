"""The Qwen3.5/3.6 MTP head (`mtp.*` tensors) kept beside an HF checkpoint.

transformers ignores `^mtp.*` at load, so a save_pretrained() after training silently drops the head; the
merge stage re-attaches it with write_mtp_tensors(). The head lives in its own shard `model-mtp.safetensors`,
listed in model.safetensors.index.json: llama.cpp's converter reads the parts the index names (or, without
an index, every `model*.safetensors`), and transformers, which prefers a single `model.safetensors` when
present, keeps loading the rest exactly as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cardforge.core.io import atomic_write_bytes, atomic_write_json, sha256_file

MTP_SHARD = "model-mtp.safetensors"
INDEX = "model.safetensors.index.json"
PREFIX = "mtp."


def mtp_shapes(hidden: int, intermediate: int, n_heads: int, n_kv_heads: int, head_dim: int) -> dict:
    """The 15 tensors of one MTP layer (q_proj holds query + output gate, hence 2 * n_heads)."""
    h = hidden
    layer = "mtp.layers.0."
    return {
        "mtp.fc.weight": (h, 2 * h),  # input = cat(enorm(embedding), hnorm(hidden)), embedding first
        "mtp.pre_fc_norm_embedding.weight": (h,),
        "mtp.pre_fc_norm_hidden.weight": (h,),
        "mtp.norm.weight": (h,),
        layer + "input_layernorm.weight": (h,),
        layer + "post_attention_layernorm.weight": (h,),
        layer + "self_attn.q_proj.weight": (2 * n_heads * head_dim, h),
        layer + "self_attn.k_proj.weight": (n_kv_heads * head_dim, h),
        layer + "self_attn.v_proj.weight": (n_kv_heads * head_dim, h),
        layer + "self_attn.o_proj.weight": (h, n_heads * head_dim),
        layer + "self_attn.q_norm.weight": (head_dim,),
        layer + "self_attn.k_norm.weight": (head_dim,),
        layer + "mlp.gate_proj.weight": (intermediate, h),
        layer + "mlp.up_proj.weight": (intermediate, h),
        layer + "mlp.down_proj.weight": (h, intermediate),
    }


def _shards(model_dir: Path) -> list[str]:
    index = model_dir / INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return sorted(p.name for p in model_dir.glob("model*.safetensors"))


def read_mtp_tensors(model_dir: str | os.PathLike) -> dict:
    """Every `mtp.*` tensor in the checkpoint, whichever shard holds it (name -> torch.Tensor)."""
    from safetensors import safe_open

    model_dir, out = Path(model_dir), {}
    for shard in _shards(model_dir):
        with safe_open(model_dir / shard, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.startswith(PREFIX):
                    out[name] = f.get_tensor(name)
    return dict(sorted(out.items()))


def write_mtp_tensors(model_dir: str | os.PathLike, tensors: dict) -> Path:
    """Write the head into `model-mtp.safetensors` and (re)write the index so every shard is listed.

    Existing `mtp.*` tensors in other shards are not allowed: two copies would make the converter's choice
    depend on file order.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    model_dir = Path(model_dir)
    bad = [n for n in tensors if not n.startswith(PREFIX)]
    if bad:
        raise ValueError(f"not MTP tensors: {bad[:3]}")
    weight_map: dict[str, str] = {}
    for shard in _shards(model_dir):
        if shard == MTP_SHARD:
            continue
        with safe_open(model_dir / shard, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.startswith(PREFIX):
                    raise ValueError(f"{shard} already holds {name}; drop it before writing the MTP shard")
                weight_map[name] = shard
    tensors = {n: t.contiguous() for n, t in sorted(tensors.items())}
    path = atomic_write_bytes(model_dir / MTP_SHARD, save(tensors, metadata={"format": "pt"}))
    weight_map.update({n: MTP_SHARD for n in tensors})
    # total_size is informational (neither transformers nor the converter checks it): the shards' file sizes
    total = sum((model_dir / s).stat().st_size for s in set(weight_map.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write_json(model_dir / INDEX, index)
    return path


def mtp_manifest(model_dir: str | os.PathLike) -> dict:
    """Names, shapes, dtypes and per-tensor sha256 of the head, plus the shard's sha256 (for run records)."""
    import hashlib

    import torch

    tensors = read_mtp_tensors(model_dir)
    shard = Path(model_dir) / MTP_SHARD
    return {
        "shard": MTP_SHARD if shard.is_file() else None,
        "shard_sha256": sha256_file(shard) if shard.is_file() else None,
        "tensors": {
            name: {
                "shape": list(t.shape),
                "dtype": str(t.dtype).removeprefix("torch."),
                "sha256": hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest(),
            }
            for name, t in tensors.items()
        },
    }
