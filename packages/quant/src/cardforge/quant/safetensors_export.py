"""FP8 block-128 and NVFP4 (W4A16 / W4A4) checkpoints from a BF16 HF checkpoint, MTP head kept."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from cardforge.core.io import atomic_dir, atomic_write_json
from cardforge.quant import fp8, nvfp4
from cardforge.quant.checkpoint import ShardWriter, copy_side_files, iter_tensors, read_config, shard_files


def _shapes(src: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    out = {}
    for f in shard_files(src):
        with safe_open(str(f), "pt") as s:
            for name in s.keys():
                out[name] = tuple(s.get_slice(name).get_shape())
    return out


def export_fp8(src: Path, out: Path, block: int = 128, progress=None) -> dict:
    ignored = fp8.ignored_modules(_shapes(src), block)
    skip = set(ignored)
    n_quant = 0
    with atomic_dir(out) as tmp:
        writer = ShardWriter(tmp)
        for name, t in iter_tensors(src):
            module = name.removesuffix(".weight")
            if fp8.is_candidate(name, t) and module not in skip:
                q, scale_inv = fp8.quantize_block(t, block)
                writer.add(name, q)
                writer.add(f"{module}.weight_scale_inv", scale_inv)
                n_quant += 1
            else:
                writer.add(name, t)
            if progress:
                progress(name)
        writer.close()
        config = read_config(src)
        config["quantization_config"] = fp8.quantization_config(ignored, block)
        atomic_write_json(tmp / "config.json", config)
        copy_side_files(src, tmp)
    return {"quantized_modules": n_quant, "ignored_modules": len(ignored)}


def text_view_name(module: str) -> str:
    """A VL checkpoint's `model.language_model.X` as the text model transformers loads from it names it
    (`model.X`); other names unchanged."""
    return "model." + module[len("model.language_model."):] if module.startswith("model.language_model.") else module


@torch.no_grad()
def calibrate_input_amax(src: Path, texts: list[str], pattern: re.Pattern, max_len: int = 256,
                         tokenizer=None) -> dict[str, float]:
    """Largest |activation| entering each selected Linear over the calibration texts (W4A4 input scales), keyed
    by the text model's module names (`model.layers.*`, whatever the checkpoint's layout: see text_view_name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = tokenizer or AutoTokenizer.from_pretrained(src)  # the caller's, if loaded: 248k tokens take seconds
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)  # a VL checkpoint: its text view
    model.eval()
    amax: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and pattern.match(name):
            def hook(m, args, _out, name=name):
                amax[name] = max(amax.get(name, 0.0), float(args[0].abs().amax()))
            hooks.append(mod.register_forward_hook(hook))
    try:
        for text in texts:
            ids = tok(text, return_tensors="pt", truncation=True, max_length=max_len)
            model.model(**ids)  # the trunk only: lm_head is never quantized, its 248k-wide logits are waste
    finally:
        for h in hooks:
            h.remove()
    return amax


def _is_nvfp4_target(name: str, shape: tuple[int, ...], pattern: re.Pattern) -> bool:
    return name.endswith(".weight") and len(shape) == 2 and bool(pattern.match(name[: -len(".weight")])) \
        and shape[1] % nvfp4.GROUP == 0


def group_weight_scales(src: Path, pattern: re.Pattern) -> dict[str, torch.Tensor]:
    """module -> the weight_scale_2 it is quantized with: one per fused group (nvfp4.FUSED_GROUPS), from the
    largest |weight| of the group's parts, as ModelOpt's export unifies them (a first pass over the weights)."""
    group_amax: dict[str, float] = {}
    members: dict[str, str] = {}
    for name, t in iter_tensors(src):
        if _is_nvfp4_target(name, tuple(t.shape), pattern):
            module = name[: -len(".weight")]
            group = nvfp4.fusion_group(module)
            members[module] = group
            group_amax[group] = max(group_amax.get(group, 0.0), float(t.float().abs().amax()))
    return {m: nvfp4.weight_global_scale(group_amax[g]) for m, g in members.items()}


def export_nvfp4(src: Path, out: Path, tier: str, calib_texts: list[str] | None = None,
                 producer_version: str = "0", progress=None, tokenizer=None) -> dict:
    """NVFP4 checkpoint of `tier` from the BF16 checkpoint `src`, in src's own layout (tensor names, config,
    every non-weight file). Fused partners share weight_scale_2 and input_scale (see nvfp4). The vision tower
    (model.visual.*), lm_head, embeddings, norms, conv1d and the MTP head stay BF16 and are listed as such."""
    if tier not in nvfp4.TIERS:
        raise ValueError(f"unknown NVFP4 tier {tier!r}; choose one of: {', '.join(nvfp4.TIERS)}")
    pattern = nvfp4.TIERS[tier]
    act_amax: dict[str, float] = {}
    if tier == "w4a4":
        if not calib_texts:
            raise ValueError("NVFP4 w4a4 needs calibration text for its input scales")
        act_amax = calibrate_input_amax(src, calib_texts, pattern, tokenizer=tokenizer)
    global_scales = group_weight_scales(src, pattern)
    group_act: dict[str, float] = {}
    for module in global_scales:
        seen = act_amax.get(text_view_name(module))
        if tier == "w4a4" and seen is None:
            raise RuntimeError(f"calibration never reached {module}; cannot set its input_scale")
        if seen is not None:
            group = nvfp4.fusion_group(module)
            group_act[group] = max(group_act.get(group, 0.0), seen)
    exclude, n_quant = [], 0
    with atomic_dir(out) as tmp:
        writer = ShardWriter(tmp)
        for name, t in iter_tensors(src):
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and module in global_scales:
                packed, block_scale, global_scale = nvfp4.quantize(t, global_scales[module])
                writer.add(name, packed)
                writer.add(f"{module}.weight_scale", block_scale)
                writer.add(f"{module}.weight_scale_2", global_scale)
                if tier == "w4a4":
                    writer.add(f"{module}.input_scale", nvfp4.input_scale(group_act[nvfp4.fusion_group(module)]))
                n_quant += 1
            else:
                # Linear-like modules kept BF16 (conv1d included, as the card says), and the whole tower
                if name.endswith(".weight") and (t.dim() == 2 or module.endswith(".conv1d")
                                                  or module.startswith("model.visual.")):
                    exclude.append(module)
                writer.add(name, t)
            if progress:
                progress(name)
        writer.close()
        qcfg = nvfp4.hf_quant_config(tier, sorted(exclude), producer_version)
        atomic_write_json(tmp / "hf_quant_config.json", qcfg)
        config = read_config(src)
        # config.json carries the flat form, whose readers (vLLM's and SGLang's modelopt configs) take the BF16
        # modules from `ignore`; hf_quant_config.json keeps ModelOpt's nested form with `exclude_modules`.
        # Without `ignore` vLLM would look for NVFP4 scales of the lm_head, the GDN a/b projections and conv1d.
        config["quantization_config"] = {"quant_method": "modelopt", **qcfg["quantization"],
                                         "ignore": list(qcfg["quantization"]["exclude_modules"])}
        atomic_write_json(tmp / "config.json", config)
        copy_side_files(src, tmp)
    groups = {nvfp4.fusion_group(m) for m in global_scales}
    return {"quantized_modules": n_quant, "excluded_modules": len(exclude),
            "fused_groups": sum(1 for g in groups if sum(nvfp4.fusion_group(m) == g for m in global_scales) > 1)}
