"""Read and write HF safetensors checkpoints tensor by tensor (a 27B model never sits in memory twice)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_json, is_weight_file

INDEX = "model.safetensors.index.json"
# Every file of the source travels with the weights unchanged (tokenizer, chat template, generation defaults,
# the image/video processor configs of a VL checkpoint, ...) except the weights and what the writer rewrites
# (config.json, the index) and our own run records.
NOT_SIDE_FILES = ("config.json", INDEX, "hf_quant_config.json", "cardforge_manifest.json")


class CheckpointError(UserError):
    pass


def shard_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory not found: {model_dir} (set quant.source or run the merge stage)")
    index = model_dir / INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors in {model_dir}: not an HF checkpoint directory")
    return files


def iter_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for f in shard_files(model_dir):
        with safe_open(str(f), "pt") as s:
            for name in s.keys():
                yield name, s.get_tensor(name)


def read_config(model_dir: Path) -> dict:
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise CheckpointError(f"{p} missing: not an HF checkpoint directory")
    return json.loads(p.read_text())


class ShardWriter:
    """Collect tensors into shards of at most `max_bytes`, then write an index like save_pretrained does."""

    def __init__(self, out_dir: Path, max_bytes: int = 4 << 30):
        self.out_dir, self.max_bytes = Path(out_dir), max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[dict[str, torch.Tensor]] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0
        self._n = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        self._n += 1
        name = f"model-{self._n:05d}.safetensors"
        save_file(self.pending, str(self.out_dir / name), metadata={"format": "pt"})
        for k in self.pending:
            self.weight_map[k] = name
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending:
            self._flush()
        atomic_write_json(self.out_dir / INDEX, {"metadata": {"total_size": self.total_bytes},
                                                  "weight_map": dict(sorted(self.weight_map.items()))})


def side_files(src: Path) -> list[Path]:
    """The non-weight files of a checkpoint dir that a derived checkpoint carries byte for byte."""
    return sorted(p for p in Path(src).iterdir() if p.is_file() and not is_weight_file(p)
                  and p.name not in NOT_SIDE_FILES and not p.name.startswith(("mtp_manifest", ".")))


def copy_side_files(src: Path, dst: Path) -> None:
    for f in side_files(src):
        shutil.copy2(f, Path(dst) / f.name)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def size_gb_gib(n_bytes: int) -> dict:
    """Both units: files are sold in GB (1e9), GPU memory is built in GiB (2^30)."""
    return {"bytes": n_bytes, "GB": round(n_bytes / 1e9, 4), "GiB": round(n_bytes / 2**30, 4)}
