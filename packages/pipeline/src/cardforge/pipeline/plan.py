"""The plan of a pipeline invocation: what each stage will run and what it needs (GPU, disk, inputs).

`make reproduce EXP=qwen36_27b_card` on a machine without GPUs or the base weights prints this plan,
checks everything that can be checked here, and stops with a message saying what is missing.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from cardforge.core.artifacts import GGUF_BPW, Outputs  # GGUF_BPW: the GGUF tiers' bits per weight (one table)


def _gb(n: float) -> str:
    return f"{n:.1f} GB ({n * 1e9 / 2**30:.1f} GiB)"


def needs_gpu(cfg: DictConfig) -> bool:
    return str(cfg.trainer.accelerator) == "gpu" or cfg.model.params_b >= 1.0


def _gguf_gb(tier: str, params_b: float) -> float:
    return GGUF_BPW.get(tier, 8) * params_b / 8


TEACHER_PROMPT_TOKENS = 1000  # system + tools prompt + task, for the ceiling before any run measured it


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def teacher_estimate(cfg: DictConfig) -> dict:
    """Teacher tokens and cost for the preset's data stage: measured (mean tokens per sample from an earlier
    run's ledger, <outputs>/data/spend.jsonl) when there is one, else the ceiling (every sample runs
    data.max_steps steps of teacher.max_tokens, the context growing by each answer)."""
    d, t = cfg.data, cfg.teacher
    n = (int(d.num_samples) or 0) * int(d.samples_per_task)  # num_samples 0: every task (unknown here)
    price = t.get("price") or {}
    pin, pout = price.get("input_per_m"), price.get("output_per_m")
    out = Outputs(cfg).data
    ledger = out.spend
    done = _lines(out.trajectories) + _lines(out.rejections)
    if ledger.is_file() and done:
        from cardforge.core.chat.jsonl import read_records

        recs = read_records(ledger)
        p_in = sum(int(r.get("prompt_tokens") or 0) for r in recs) / done
        p_out = sum(int(r.get("completion_tokens") or 0) for r in recs) / done
        how = f"measured: {len(recs)} requests over {done} samples in {ledger}"
    else:
        steps, mt = int(d.max_steps), int(t.max_tokens)
        p_in = sum(TEACHER_PROMPT_TOKENS + k * mt for k in range(steps))
        p_out = steps * mt
        how = f"ceiling: {d.max_steps} steps x {t.max_tokens} tokens per sample"
    est = {"samples": n, "prompt_tokens": round(n * p_in), "completion_tokens": round(n * p_out), "how": how,
           "cost": None, "currency": str(price.get("currency") or "USD")}
    if pin is not None and pout is not None:
        est["cost"] = (est["prompt_tokens"] * float(pin) + est["completion_tokens"] * float(pout)) / 1e6
    return est


def _teacher_line(cfg: DictConfig) -> str:
    e = teacher_estimate(cfg)
    if not e["samples"]:
        return "teacher tokens: unknown until the tasks are loaded (data.num_samples=0: every task)"
    cost = f"{e['cost']:,.2f} {e['currency']}" if e["cost"] is not None else "unknown (set teacher.price)"
    budget = cfg.data.get("budget") or {}
    limits = [f"{k}={v}" for k, v in budget.items() if v is not None]
    return (f"teacher tokens ~{e['prompt_tokens'] / 1e6:,.1f}M in + {e['completion_tokens'] / 1e6:,.1f}M out, "
            f"cost ~{cost} ({e['how']}); data.budget: {', '.join(limits) or 'none'}")


def checkpoint_layout(cfg: DictConfig) -> dict | None:
    """The base checkpoint's real layout, when its config.json is known without the weights (an embedded model,
    a local model.path, or Qwen3.6-27B): parameters per part, the LoRA modules on the real names, training
    memory floor (cardforge.core.models.layout) and each output's size by the writers' own module rules
    (cardforge.quant.sizes). None otherwise (the plan then estimates from model.params_b)."""
    from cardforge.core.models import layout

    config = layout.known_config(cfg.model)
    if config is None:
        return None
    facts = layout.plan_facts(config, list(cfg.lora.target_modules), int(cfg.lora.r), str(cfg.trainer.optimizer),
                              weight_bytes=2 if "bf16" in str(cfg.trainer.precision) else 4)
    try:  # optional, like the stages the pipeline names by string: core never requires the quant package
        sizes = importlib.import_module("cardforge.quant.sizes")
    except ImportError:  # the quant package not installed: sizes from params_b
        return facts
    bpw = {t: GGUF_BPW.get(t, 8) for t in ["BF16", *[t.tier.value for t in cfg.quant.gguf_tiers]]}
    facts["sizes"] = sizes.estimate(layout.inventory(config), bpw, int(cfg.quant.fp8_block))
    return facts


def _lora_line(facts: dict, r: int) -> str:
    mods = facts["lora_modules"]
    by_count: dict[int, list[str]] = {}
    for t, n in mods.items():
        by_count.setdefault(n, []).append(t)
    kinds = "; ".join(f"{'/'.join(ts)} x{n}" for n, ts in by_count.items())
    return (f"LoRA r{r} on {sum(mods.values())} language-model modules ({kinds}; none in the vision tower): "
            f"{facts['lora_params'] / 1e6:,.1f}M params, adapter {_gb(facts['adapter_bytes'] / 1e9)}; loads the text "
            f"view, {facts['text_view_params'] / 1e9:.2f}B params; memory floor {_gb(facts['train_floor_bytes'] / 1e9)} "
            "(base weights + fp32 LoRA, grads, optimizer) + activations")


def plan(cfg: DictConfig) -> list[tuple[str, str, str]]:
    """(stage, command, needs) rows, one per stage this invocation chains (the mtp row only with mtp.enabled)."""
    facts = checkpoint_layout(cfg)
    p = facts["params"]["total"] / 1e9 if facts else cfg.model.params_b
    size = (facts or {}).get("sizes", {})
    exp = cfg.experiment
    gpu = needs_gpu(cfg)
    bf16 = size["BF16"] / 1e9 if size else 2 * p
    tiers = [t.tier.value for t in cfg.quant.gguf_tiers]

    def tier_gb(t: str) -> float:
        return size[f"GGUF-{t}"] / 1e9 if f"GGUF-{t}" in size else _gguf_gb(t, p)

    gguf = sum(tier_gb(t) for t in tiers) + tier_gb("BF16") + size.get("mmproj", 0) / 1e9  # BF16 = the tiers' source
    teacher = f"{cfg.teacher.kind.value} `{cfg.teacher.model}`" + (f" at {cfg.teacher.base_url}" if cfg.teacher.base_url else "")
    embedded = [n for n, on in ((cfg.model.name, cfg.model.embedded),
                                (cfg.teacher.model, cfg.teacher.kind.value == "embedded")) if on]
    models = (f"builds the embedded {', '.join(dict.fromkeys(embedded))} into the cache (no network)" if embedded
              else "nothing to build (no embedded model)")
    if not cfg.model.embedded:
        models += f"; base weights at model.path={cfg.model.path}: {_gb(bf16)} on disk"
    if facts:
        parts = facts["params"]
        models += ("; layout: " + ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in parts.items() if k != "total")
                   + f" params ({parts['total'] / 1e9:.2f}B)")
    if gpu:
        train = (f"GPU for LoRA r{cfg.lora.r} on {p:.3g}B (27B measured: 102.6 GiB peak at seq 4096 with plain "
                 f"transformers+PEFT on one H200); base weights {_gb(bf16)}")
    else:
        train = f"CPU ({cfg.trainer.precision}) for LoRA r{cfg.lora.r} on {p:.3g}B; base weights {_gb(bf16)}"
    if facts:
        train += "; " + _lora_line(facts, int(cfg.lora.r))
    if facts and gpu:  # the per-GPU split of scale-out (issue 21): same formulas as the CPU FSDP2 test
        from cardforge.core.models import layout
        from cardforge.pipeline import fsdp_memory

        seq = int(cfg.data.max_seq_len)
        rows_ = fsdp_memory.plan_rows(layout.known_config(cfg.model), list(cfg.lora.target_modules),
                                      int(cfg.lora.r), seq, optimizer="adamw")  # FSDP2's (no 8-bit on DTensors)
        train += "; " + fsdp_memory.plan_line(rows_, seq)
    rows = [
        ("models", f"python -m cardforge.pipeline experiment={exp} until=models", models),
        ("data", f"python -m cardforge.data experiment={exp}",
         f"teacher {teacher} ({cfg.data.num_samples} samples, tool results {cfg.data.tool_results.value}); sandbox; "
         + _teacher_line(cfg)),
        ("train", f"python -m cardforge.train experiment={exp}", train),
        ("merge", f"python -m cardforge.train.merge experiment={exp}",
         f"CPU, one shard at a time (the base's own shards); disk {_gb(bf16)} in the base's layout"
         + (" (tower and MTP head byte-identical)" if size.get("mmproj") else "")),
    ]
    m = cfg.mtp
    if m.enabled:
        where = (f"GPU: the frozen trunk in {m.dtype} (~{_gb(bf16)} of weights) generates and trains the MTP head"
                 if gpu else f"CPU ({m.dtype}): the frozen trunk generates and trains the MTP head")
        bench = (f"; bench: both heads as {m.bench_tier} GGUF (~{_gb(2 * tier_gb(str(m.bench_tier)))}) on "
                 "llama-server" if m.bench else "")
        rows.append(("mtp", f"python -m cardforge.train.mtp experiment={exp}",
                     f"{where}; {m.num_prompts} prompts x {m.samples_per_prompt} continuations of "
                     f"{m.max_new_tokens} tokens, {m.steps} steps; disk: the merged files hard-linked + the new "
                     f"mtp.* shard{bench}"))
    if size:
        fp8, nv = _gb(size["FP8"] / 1e9), ", ".join(f"{k.removeprefix('NVFP4-')} ~{_gb(v / 1e9)}"
                                                    for k, v in size.items() if k.startswith("NVFP4-"))
        mm = f" + mmproj ~{_gb(size['mmproj'] / 1e9)}" if size.get("mmproj") else ""
    else:
        fp8, nv, mm = f"~{_gb(p)}", f"~{_gb(0.6 * p)} per tier", ""
    rows.append(("quant", f"python -m cardforge.quant experiment={exp}",
                 f"GGUF {', '.join(tiers)} + BF16 source{mm}: disk ~{_gb(gguf)}; FP8 {fp8}; NVFP4 {nv}; "
                 "W4A4 calibration runs the model" + (" (GPU)" if gpu else " (CPU)")))
    ev, tier = cfg.eval, str(cfg.eval.quant_tier)
    n_models = 2 if ev.compare_base else 1
    serve = (f"llama-server on the {tier} GGUF (~{_gb(tier_gb(tier))}) + KV cache for {ev.concurrency} slots x "
             f"ctx {cfg.serve.ctx_size}, {'distill then base' if ev.compare_base else 'distill'}")
    rows.append(("eval", f"python -m cardforge.eval experiment={exp}",
                 (f"GPU (all layers offloaded) for {serve}" if gpu else f"CPU for {serve}")
                 + f"; {', '.join(ev.suites)}; max_tokens {ev.max_tokens}, concurrency {ev.concurrency}; "
                 f"MTP speed bench n-max {list(ev.mtp_n_max)} x {n_models} model(s)"))
    rows.append(("card", f"python -m cardforge.card experiment={exp}", "MLflow runs of this invocation"))
    return rows


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent: the filesystem paths.outputs will be written on (its mount, not
    the root filesystem's: a data disk mounted at /data is where a 27B chain's 300 GB go)."""
    p = Path(os.path.expanduser(str(path))).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


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
    size = (checkpoint_layout(cfg) or {}).get("sizes")
    if size:  # the merged copy, the GGUF source + tiers + mmproj, FP8, NVFP4 tiers
        need = sum(v for k, v in size.items()) / 1e9
    else:
        need = 2 * cfg.model.params_b * 6  # weights, merged copy, GGUF source + tiers, FP8, NVFP4
    free = shutil.disk_usage(_existing(Outputs(cfg).root)).free / 1e9
    if need > free:
        out.append(f"disk: ~{need:.0f} GB needed under paths.outputs, {free:.0f} GB free")
    return out


def render(cfg: DictConfig) -> str:
    rows = ["| stage | command | needs |", "|---|---|---|"] + [f"| {s} | `{c}` | {n} |" for s, c, n in plan(cfg)]
    return "\n".join(rows)


def report(cfg: DictConfig) -> str:
    """`plan=true` (make plan EXP=...): the plan, then what stops it on this machine; nothing is run."""
    missing = problems(cfg)
    where = "GPU" if needs_gpu(cfg) else "CPU"
    lines = [f"pipeline plan for experiment={cfg.experiment} ({where}):", render(cfg), ""]
    if missing:
        lines += [f"cannot run on this machine ({len(missing)}):"] + [f"  - {m}" for m in missing]
    else:
        lines.append(f"nothing missing here: `make reproduce EXP={cfg.experiment}` runs it")
    return "\n".join(lines)
