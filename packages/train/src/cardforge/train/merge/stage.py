"""Merge stage: base + LoRA adapter -> one BF16 safetensors checkpoint that still carries the MTP head.

Run as: python -m cardforge.train.merge [hydra overrides]      (make merge EXP=tiny)

Reads  the base (`cfg.model`) and <outputs>/train/adapter/ (run `make train` first)
Writes <outputs>/merge/model/: model.safetensors (BF16) + config + tokenizer + chat template, and, when the
       base has one, the untouched `mtp.*` head in model-mtp.safetensors (transformers drops `mtp.*` at load,
       so the head never passes through the model: it is copied tensor by tensor from the base).
       mtp_manifest.base.json / mtp_manifest.merged.json (name, shape, dtype, sha256 per tensor) beside it.
The stage fails if the base has an MTP head and the merged checkpoint's head is missing or differs.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from cardforge.core import tracking
from cardforge.core.io import atomic_dir, atomic_write_json
from cardforge.core.models import mtp

log = logging.getLogger("cardforge.merge")
# everything a serving stack needs besides the weights; copied byte for byte (re-saving a tokenizer can
# rewrite its class or normalizer, see REFERENCE.md "Trap")
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


class MtpHeadLost(RuntimeError):
    """The base has an MTP head and the merged checkpoint does not carry it unchanged."""


@dataclass
class MergeResult:
    model_dir: str
    adapter_dir: str
    base_dir: str
    mtp_tensors: int
    mtp_manifest_match: bool
    wall_s: float


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Fold the adapter into the base weights (computed in fp32, stored as `dtype`) and write an HF directory."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)  # W + BA in fp32, rounded once
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(getattr(torch, dtype))
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        for name in SIDE_FILES:  # the base's own bytes, also over transformers' re-serialised generation_config
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, tmp / name)
        head = mtp.read_mtp_tensors(base_dir)
        if head:
            mtp.write_mtp_tensors(tmp, head)
        check_mtp(base_dir, tmp)
    return out_dir


def check_mtp(base_dir: str | Path, merged_dir: str | Path) -> tuple[dict, dict]:
    """(base manifest, merged manifest); raises MtpHeadLost unless every base `mtp.*` tensor is in the merge
    with the same name, shape, dtype and bytes."""
    base, merged = mtp.mtp_manifest(base_dir), mtp.mtp_manifest(merged_dir)
    if base["tensors"] and base["tensors"] != merged["tensors"]:
        lost = sorted(set(base["tensors"]) - set(merged["tensors"]))
        changed = sorted(n for n in set(base["tensors"]) & set(merged["tensors"])
                         if base["tensors"][n] != merged["tensors"][n])
        raise MtpHeadLost(f"{merged_dir}: the base's MTP head did not survive the merge "
                          f"(missing {len(lost)} tensors e.g. {lost[:2]}, changed {len(changed)} e.g. {changed[:2]})")
    return base, merged


def adapter_path(cfg: DictConfig) -> Path:
    return Path(cfg.paths.outputs) / "train" / "adapter"


def run(cfg: DictConfig) -> MergeResult:
    import mlflow

    from cardforge.train.stage import MissingInputError, model_path

    adapter = adapter_path(cfg)
    if not (adapter / "adapter_config.json").is_file():
        raise MissingInputError(f"{adapter} holds no PEFT adapter: run the train stage first "
                                f"(make train EXP={cfg.experiment}, or python -m cardforge.train)")
    base = model_path(cfg)
    out_root = Path(cfg.paths.outputs) / "merge"
    out = out_root / "model"
    with tracking.stage_run(cfg, "merge"):
        t0 = time.perf_counter()
        base_manifest = mtp.mtp_manifest(base)
        if cfg.model.has_mtp and not base_manifest["tensors"]:
            raise MtpHeadLost(f"model.has_mtp=true but {base} has no mtp.* tensors (set model.has_mtp=false "
                              "for a base without an MTP head)")
        merge_adapter(base, adapter, out, dtype="bfloat16")
        base_manifest, merged_manifest = check_mtp(base, out)
        atomic_write_json(out_root / "mtp_manifest.base.json", base_manifest)
        atomic_write_json(out_root / "mtp_manifest.merged.json", merged_manifest)
        result = MergeResult(model_dir=str(out), adapter_dir=str(adapter), base_dir=str(base),
                             mtp_tensors=len(merged_manifest["tensors"]),
                             mtp_manifest_match=base_manifest["tensors"] == merged_manifest["tensors"],
                             wall_s=time.perf_counter() - t0)
        atomic_write_json(out_root / "merge_result.json", asdict(result))
        mlflow.log_metrics({"merge/wall_s": result.wall_s, "merge/mtp_tensors": result.mtp_tensors})
        mlflow.set_tags({"merge.mtp_manifest_match": str(result.mtp_manifest_match).lower(),
                         "merge.mtp_shard_sha256": merged_manifest["shard_sha256"] or ""})
        for name in ("mtp_manifest.base.json", "mtp_manifest.merged.json", "merge_result.json"):
            mlflow.log_artifact(str(out_root / name))
        log.info("merged %s + %s -> %s (%d MTP tensors kept) in %.1f s", base, adapter, out, result.mtp_tensors,
                 result.wall_s)
    return result
