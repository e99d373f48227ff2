"""Merge stage: base + LoRA adapter -> one BF16 safetensors checkpoint that still carries the MTP head.

Run as: python -m cardforge.train.merge [hydra overrides]      (make merge EXP=tiny)

Reads  the base (`cfg.model`) and <outputs>/train/adapter/ (run `make train` first)
Writes <outputs>/merge/model/: the base's layout exactly (same files, tensor names, shards, dtypes, index,
       config, tokenizer, chat template, processor configs): the adapted Linear weights are W + s*B@A, every
       other tensor keeps its bytes: a vision-language base's tower (model.visual.*) and the `mtp.*` head
       (which transformers would drop) never pass through a model. The merge is tensor by tensor
       (merge_adapter), not PEFT's merge_and_unload + save_pretrained, which writes the text view's layout.
       mtp_manifest.base.json / mtp_manifest.merged.json (name, shape, dtype, sha256 per tensor) and
       merge_layout.json (adapted / unchanged counts, sha256 of the unchanged tensors per part) beside it.
The stage fails if the base has an MTP head and the merged checkpoint's head is missing or differs, or if any
tensor without an adapter changed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from cardforge.core import tracking
from cardforge.core.artifacts import Outputs
from cardforge.core.io import atomic_dir, atomic_write_json, is_weight_file
from cardforge.core.models import MANIFEST, mtp

log = logging.getLogger("cardforge.merge")


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


class MergeError(RuntimeError):
    """The adapter cannot be folded into this base as written (an unsupported PEFT feature, an unknown module)."""


def _shard_map(model_dir: Path) -> dict[str, str]:
    """tensor name -> shard file, from the index or (no index) from every *.safetensors."""
    from safetensors import safe_open

    index = model_dir / mtp.INDEX
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            out.update({n: f.name for n in s.keys()})  # noqa: SIM118
    return out


def checkpoint_key(module: str, base_keys: set[str]) -> str:
    """The base checkpoint's weight name for a module as the trained (text) model names it: the same name, or,
    in a vision-language checkpoint, `model.layers.*` under `model.language_model.*` (transformers loads the
    text view with that prefix removed, so the adapter never sees it)."""
    for name in (f"{module}.weight",
                 f"model.language_model.{module.removeprefix('model.')}.weight" if module.startswith("model.") else None):
        if name and name in base_keys:
            return name
    raise MergeError(f"adapter module {module} has no weight in the base checkpoint (neither {module}.weight nor "
                     "its model.language_model.* name): the adapter was trained on another model")


def lora_deltas(adapter_dir: Path) -> tuple[dict[str, tuple], float]:
    """{module: (A, B)} of a PEFT LoRA adapter and its scale; refuses what a plain W + s*B@A merge cannot fold."""
    from safetensors.torch import load_file

    peft = json.loads((adapter_dir / "adapter_config.json").read_text())
    bad = [k for k, ok in (("peft_type", peft.get("peft_type") == "LORA"), ("use_dora", not peft.get("use_dora")),
                           ("modules_to_save", not peft.get("modules_to_save")),
                           ("bias", peft.get("bias", "none") == "none"),
                           ("rank_pattern", not peft.get("rank_pattern")), ("alpha_pattern", not peft.get("alpha_pattern")),
                           ("fan_in_fan_out", not peft.get("fan_in_fan_out"))) if not ok]
    if bad:
        raise MergeError(f"{adapter_dir}/adapter_config.json: {', '.join(bad)} not supported by the merge "
                         "(a plain LoRA with lora.bias=none, no DoRA, no modules_to_save)")
    r, alpha = int(peft["r"]), float(peft["lora_alpha"])
    scale = alpha / (r ** 0.5 if peft.get("use_rslora") else r)
    pairs: dict[str, dict] = {}
    for key, t in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise MergeError(f"{adapter_dir}: unexpected adapter tensor {key} (only lora_A / lora_B weights merge)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = t
    missing = [mod for mod, p in pairs.items() if set(p) != {"A", "B"}]
    if missing:
        raise MergeError(f"{adapter_dir}: lora_A/lora_B pair incomplete for {missing[:3]}")
    return {mod: (p["A"], p["B"]) for mod, p in sorted(pairs.items())}, scale


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, report: dict | None = None) -> Path:
    """Fold the adapter into the base, tensor by tensor: W' = W + scale * B @ A in fp32, stored in W's dtype.

    The output has the base's layout exactly: the same files, shard by shard, the same tensor names, dtypes,
    index and config (a vision-language base stays one: model.language_model.* / model.visual.* / lm_head /
    mtp.*). A shard with no adapted tensor (the MTP shard; the tower's, on a sharded 27B) is copied byte for
    byte, every other tensor keeps its bytes, and every non-weight file of the base (config, tokenizer, chat
    template, processor configs, generation config) is copied unchanged. One shard at a time in memory.
    `report`, if given, receives check_layout()'s result.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    deltas, scale = lora_deltas(adapter_dir)
    shard_of = _shard_map(base_dir)
    targets = {checkpoint_key(mod, set(shard_of)): ab for mod, ab in deltas.items()}
    with atomic_dir(out_dir) as tmp:
        for f in sorted(p for p in base_dir.iterdir() if p.is_file()):
            if f.name == MANIFEST or is_weight_file(f):  # the merge writes the weights; no other format travels
                continue
            shutil.copyfile(f, tmp / f.name)  # config, index, tokenizer, template, processor configs
        for shard in sorted(set(shard_of.values())):
            touched = [n for n, s in shard_of.items() if s == shard and n in targets]
            if not touched:
                shutil.copyfile(base_dir / shard, tmp / shard)
                continue
            with safe_open(str(base_dir / shard), "pt") as s:
                meta, tensors = s.metadata(), {}
                for name in s.keys():  # noqa: SIM118
                    t = s.get_tensor(name)
                    if name in targets:
                        a, b = targets[name]
                        if t.shape != (b.shape[0], a.shape[1]):
                            raise MergeError(f"{name}: base {tuple(t.shape)} vs adapter B@A "
                                             f"{(b.shape[0], a.shape[1])}: the adapter was trained on another model")
                        t = (t.float() + scale * (b.float() @ a.float())).to(t.dtype)
                    tensors[name] = t.contiguous()
            save_file(tensors, str(tmp / shard), metadata=meta)
        check_mtp(base_dir, tmp)
        checked = check_layout(base_dir, tmp, set(targets))
        if report is not None:
            report.update(checked)
    return out_dir


def check_layout(base_dir: str | Path, merged_dir: str | Path, adapted: set[str]) -> dict:
    """Same tensor names, shards, shapes and dtypes as the base; every tensor outside `adapted` byte-identical.
    Returns {"adapted": n, "unchanged": n, "sha256_unchanged": {part: sha256 over that part's tensors}}."""
    import hashlib

    from safetensors import safe_open

    from cardforge.core.models import layout

    base_dir, merged_dir = Path(base_dir), Path(merged_dir)
    base_map, merged_map = _shard_map(base_dir), _shard_map(merged_dir)
    if base_map != merged_map:
        raise MergeError(f"{merged_dir}: tensor names or shards differ from the base's "
                         f"({sorted(set(base_map) ^ set(merged_map))[:3]})")
    digests: dict[str, hashlib._Hash] = {}
    unchanged = 0
    for shard in sorted(set(base_map.values())):
        with safe_open(str(base_dir / shard), "pt") as b, safe_open(str(merged_dir / shard), "pt") as m:
            for name in sorted(b.keys()):
                tb, tm = b.get_tensor(name), m.get_tensor(name)
                if tb.dtype != tm.dtype or tb.shape != tm.shape:
                    raise MergeError(f"{name}: {tb.dtype}{tuple(tb.shape)} in the base, {tm.dtype}{tuple(tm.shape)} merged")
                if name in adapted:
                    continue
                raw_b, raw_m = _raw(tb), _raw(tm)
                if raw_b != raw_m:
                    raise MergeError(f"{name} changed in the merge but has no adapter")
                unchanged += 1
                digests.setdefault(layout.part(name), hashlib.sha256()).update(name.encode() + raw_m)
    return {"adapted": len(adapted), "unchanged": unchanged,
            "sha256_unchanged": {k: v.hexdigest() for k, v in sorted(digests.items())}}


def _raw(t) -> bytes:
    import torch

    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


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
    return Outputs(cfg).train.adapter


def run(cfg: DictConfig) -> MergeResult:
    import mlflow

    from cardforge.train.stage import MissingInputError, model_path

    adapter = adapter_path(cfg)
    if not (adapter / "adapter_config.json").is_file():
        raise MissingInputError(f"{adapter} holds no PEFT adapter: run the train stage first "
                                f"(make train EXP={cfg.experiment}, or python -m cardforge.train)")
    base = model_path(cfg)
    written = Outputs(cfg).merge
    out_root, out = written.dir, written.model
    from cardforge.core.io import dir_bytes, preflight_output

    # the merged checkpoint is a full copy of the base (written beside the old one, then swapped in)
    preflight_output(out_root, dir_bytes(base) + (64 << 20), stage="merge")
    with tracking.stage_run(cfg, "merge"):
        t0 = time.perf_counter()
        base_manifest = mtp.mtp_manifest(base)
        if cfg.model.has_mtp and not base_manifest["tensors"]:
            raise MtpHeadLost(f"model.has_mtp=true but {base} has no mtp.* tensors (set model.has_mtp=false "
                              "for a base without an MTP head)")
        layout_report: dict = {}
        merge_adapter(base, adapter, out, report=layout_report)
        atomic_write_json(written.layout, layout_report)
        base_manifest, merged_manifest = check_mtp(base, out)
        from cardforge.core.chat.template import checkpoint_template, template_identity

        template = checkpoint_template(base)  # the base's own chat template travels byte for byte
        if checkpoint_template(out) != template:
            raise RuntimeError(f"{out}: the chat template differs from the base's ({base}); the merge must copy it")
        atomic_write_json(written.base_manifest, base_manifest)
        atomic_write_json(written.merged_manifest, merged_manifest)
        result = MergeResult(model_dir=str(out), adapter_dir=str(adapter), base_dir=str(base),
                             mtp_tensors=len(merged_manifest["tensors"]),
                             mtp_manifest_match=base_manifest["tensors"] == merged_manifest["tensors"],
                             wall_s=time.perf_counter() - t0)
        atomic_write_json(written.result, asdict(result))
        mlflow.log_metrics({"merge/wall_s": result.wall_s, "merge/mtp_tensors": result.mtp_tensors})
        mlflow.set_tags({"merge.mtp_manifest_match": str(result.mtp_manifest_match).lower(),
                         "merge.mtp_shard_sha256": merged_manifest["shard_sha256"] or "",
                         **{f"merge.{k}": v for k, v in template_identity(template).items()}})
        mlflow.log_metrics({"merge/adapted_tensors": layout_report["adapted"],
                            "merge/unchanged_tensors": layout_report["unchanged"]})
        for path in (written.base_manifest, written.merged_manifest, written.result, written.layout):
            mlflow.log_artifact(str(path))
        log.info("merged %s + %s -> %s (%d MTP tensors kept) in %.1f s", base, adapter, out, result.mtp_tensors,
                 result.wall_s)
    return result
