"""The plan of a pipeline invocation: what each stage will run and what it needs (GPU, disk, inputs).

`make reproduce EXP=qwen36_27b_card` on a machine without GPUs or the base weights prints this plan,
checks everything that can be checked here, and stops with a message saying what is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

# bits per weight of the GGUF tiers (llama.cpp's mixes, measured on dense models), for disk estimates
GGUF_BPW = {"BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_0": 5.5, "Q4_K_M": 4.89, "Q4_0": 4.5}


def _gb(n: float) -> str:
    return f"{n:.1f} GB ({n * 1e9 / 2**30:.1f} GiB)"


def needs_gpu(cfg: DictConfig) -> bool:
    return str(cfg.trainer.accelerator) == "gpu" or cfg.model.params_b >= 1.0


def plan(cfg: DictConfig) -> list[tuple[str, str, str]]:
    """(stage, command, needs) rows."""
    p = cfg.model.params_b
    exp = cfg.experiment
    bf16 = 2 * p
    tiers = [t.tier.value for t in cfg.quant.gguf_tiers]
    gguf = sum(GGUF_BPW.get(t, 8) for t in tiers) * p / 8 + bf16  # the BF16 GGUF is the tiers' source
    teacher = f"{cfg.teacher.kind.value} `{cfg.teacher.model}`" + (f" at {cfg.teacher.base_url}" if cfg.teacher.base_url else "")
    return [
        ("data", f"python -m cardforge.data experiment={exp}",
         f"teacher {teacher} ({cfg.data.num_samples} samples, tool results {cfg.data.tool_results.value}); sandbox"),
        ("train", f"python -m cardforge.train experiment={exp}",
         f"GPU for LoRA r{cfg.lora.r} on {p:g}B (27B measured: 102.6 GiB peak at seq 4096 with plain "
         f"transformers+PEFT on one H200); base weights {_gb(bf16)}"),
        ("merge", f"python -m cardforge.train.merge experiment={exp}", f"CPU RAM ~{_gb(bf16)}; disk {_gb(bf16)}"),
        ("quant", f"python -m cardforge.quant experiment={exp}",
         f"GGUF {', '.join(tiers)} + BF16 source: disk ~{_gb(gguf)}; FP8 ~{_gb(p)}; NVFP4 ~{_gb(0.6 * p)} per tier; "
         "W4A4 calibration runs the model (GPU)"),
        ("eval", f"python -m cardforge.eval experiment={exp}",
         f"llama-server on {cfg.eval.quant_tier} for distill and base; {', '.join(cfg.eval.suites)}; "
         f"max_tokens {cfg.eval.max_tokens}, concurrency {cfg.eval.concurrency}"),
        ("card", f"python -m cardforge.card experiment={exp}", "MLflow runs of this invocation"),
    ]


def problems(cfg: DictConfig) -> list[str]:
    """What stops this preset here, each a line naming the fix."""
    out = []
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        gpus = 0
    if needs_gpu(cfg) and gpus == 0:
        out.append(f"no CUDA GPU visible (trainer.accelerator={cfg.trainer.accelerator}, model {cfg.model.params_b:g}B)")
    if not cfg.model.embedded and not Path(cfg.model.path).is_dir():
        out.append(f"base weights not on disk: model.path={cfg.model.path} (download it, or set CARDFORGE_BASE_MODEL=DIR)")
    if cfg.teacher.kind.value == "endpoint" and not os.environ.get(cfg.teacher.api_key_env):
        out.append(f"teacher API key missing: set ${cfg.teacher.api_key_env} for {cfg.teacher.base_url}")
    try:
        from hydra.utils import instantiate

        instantiate(cfg.lora)  # the LoRA config binds (target modules are resolved against the model later)
    except Exception as e:  # noqa: BLE001
        out.append(f"lora: {e}")
    try:
        from cardforge.core import llama_cpp

        llama_cpp.binary("llama-server")
        llama_cpp.converter_dir()
    except Exception as e:  # noqa: BLE001
        out.append(str(e))
    need = 2 * cfg.model.params_b * 6  # weights, merged copy, GGUF source + tiers, FP8, NVFP4
    free = shutil.disk_usage(Path(cfg.paths.outputs).anchor or "/").free / 1e9
    if need > free:
        out.append(f"disk: ~{need:.0f} GB needed under paths.outputs, {free:.0f} GB free")
    return out


def render(cfg: DictConfig) -> str:
    rows = ["| stage | command | needs |", "|---|---|---|"] + [f"| {s} | `{c}` | {n} |" for s, c, n in plan(cfg)]
    return "\n".join(rows)
