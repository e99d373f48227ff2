"""The quant stage: GGUF tiers (imatrix) + FP8 block-128 + NVFP4 W4A16/W4A4, each checked for its MTP head.

Run as: python -m cardforge.quant [format=gguf|fp8|nvfp4] [quant.source=DIR] [quant.calibration=FILE]
Outputs under <paths.outputs>/quant/: gguf/, fp8/, nvfp4-w4a16/, nvfp4-w4a4/, quant_results.json, quant_table.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig

from cardforge.core import llama_cpp, tracking
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_json, atomic_write_text
from cardforge.core.models.mtp import mtp_manifest
from cardforge.quant import calibration, gguf, lineage
from cardforge.quant.checkpoint import dir_size, read_config, shard_files, size_gb_gib
from cardforge.quant.safetensors_export import export_fp8, export_nvfp4


def source_dir(cfg: DictConfig) -> Path:
    if cfg.quant.source:
        return Path(cfg.quant.source)
    if cfg.mtp.enabled:  # the MTP stage's checkpoint: merge's, with the retrained head
        retrained = Path(cfg.paths.outputs) / "mtp" / "model"
        if not retrained.is_dir():
            raise UserError(f"mtp.enabled=true but no retrained checkpoint at {retrained}: run `make mtp` "
                            "first, or set mtp.enabled=false to quantize the merged model with the grafted head")
        return retrained
    merged = Path(cfg.paths.outputs) / "merge" / "model"
    if not merged.is_dir():
        raise UserError(f"no merged model at {merged}: run `make merge` first or set quant.source=DIR")
    return merged


def calibration_files(cfg: DictConfig) -> list[Path]:
    if cfg.quant.calibration:
        return [Path(cfg.quant.calibration)]
    data = Path(cfg.paths.outputs) / "data"
    return [data / "trajectories.jsonl", data / "rejections.jsonl"]


def _log(msg: str) -> None:
    print(f"[quant] {msg}", file=sys.stderr, flush=True)


def formats(cfg: DictConfig) -> list[str]:
    if cfg.format is not None:
        return [cfg.format.value]
    out = ["gguf"]
    if cfg.quant.fp8:
        out.append("fp8")
    if cfg.quant.nvfp4:
        out.append("nvfp4")
    return out


def run_gguf(cfg: DictConfig, src: Path, out: Path, texts: tuple[list[str], list[str]], head: dict | None,
             tokenizer) -> dict:
    q, threads = cfg.quant, cfg.quant.threads or os.cpu_count() or 1
    gdir, logs = out / "gguf", out / "logs"
    gdir.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    name, has_mtp = cfg.model.name, bool(head and head["tensors"])
    calib_txt, held_txt = out / "calibration.txt", out / "heldout.txt"
    need = 2 * q.imatrix_ctx + 64  # both tools refuse text shorter than two contexts
    atomic_write_text(calib_txt, calibration.at_least("\n\n".join(texts[0]), need, tokenizer))
    atomic_write_text(held_txt, calibration.at_least("\n\n".join(texts[1]), need, tokenizer))

    t0 = time.perf_counter()
    bf16 = gguf.convert(src, gdir / gguf.file_name(name, gguf.Tier("BF16", False), has_mtp))
    _log(f"BF16 GGUF in {time.perf_counter() - t0:.1f} s: {bf16.name}")
    files: dict[str, dict[str, Any]] = {"BF16": {"path": str(bf16), **lineage.check_gguf(bf16, head or {"tensors": {}})}}

    tiers = [gguf.Tier(t.tier.value, t.imatrix) for t in q.gguf_tiers]
    if q.compare_no_imatrix and any(t.name == "Q4_K_M" and t.imatrix for t in tiers):
        tiers.append(gguf.Tier("Q4_K_M", False))  # the side-by-side the card's choice of imatrix rests on
    imat = None
    if any(t.imatrix for t in tiers) or any(t.imatrix for t in q.base_tiers):
        t0 = time.perf_counter()
        imat = gguf.imatrix(bf16, calib_txt, out / "imatrix.gguf", q.imatrix_chunks, q.imatrix_ctx, threads,
                            logs / "imatrix.log")
        _log(f"imatrix in {time.perf_counter() - t0:.1f} s ({q.imatrix_chunks} chunks x {q.imatrix_ctx} ctx)")
        mlflow.log_artifact(str(imat), "quant")
    for tier in tiers:
        t0 = time.perf_counter()
        path = gguf.quantize(bf16, gdir / gguf.file_name(name, tier, has_mtp), tier, imat, threads,
                             logs / f"quantize-{tier.name}-{int(tier.imatrix)}.log")
        key = f"{tier.name}{'-imatrix' if tier.imatrix else ''}"
        files[key] = {"path": str(path), "seconds": round(time.perf_counter() - t0, 2),
                      **lineage.check_gguf(path, head or {"tensors": {}})}
        _log(f"{path.name} in {files[key]['seconds']} s")

    files.update(run_base_gguf(cfg, gdir, imat, threads, logs, head))
    base_logits = out / "bf16-logits.bin"
    gguf.kld_base(bf16, held_txt, base_logits, q.imatrix_ctx, q.kld_chunks, threads, logs / "kld-base.log")
    for key, info in files.items():
        path = Path(info["path"])
        info.update(size_gb_gib(path.stat().st_size))
        if key != "BF16" and not key.startswith("base:"):
            info.update(gguf.kld(path, base_logits, q.imatrix_ctx, threads, logs / f"kld-{key}.log"))
    base_logits.unlink(missing_ok=True)  # large and reproducible
    return files


def base_model_dir(cfg: DictConfig) -> Path:
    if cfg.model.embedded:
        from cardforge.core.models import prepare

        return prepare(cfg.model.name)
    path = Path(cfg.model.path)
    if not path.is_dir():
        raise UserError(f"model.path={cfg.model.path} is not a local directory: quant.base_tiers needs the base "
                        "checkpoint on disk (download it, or set quant.base_tiers=[])")
    return path


def run_base_gguf(cfg: DictConfig, gdir: Path, imat: Path | None, threads: int, logs: Path,
                  head: dict | None) -> dict:
    """The base model at quant.base_tiers with the distilled model's imatrix (distill vs base, same spec)."""
    if not cfg.quant.base_tiers:
        return {}
    bdir = gdir / "base"
    bdir.mkdir(exist_ok=True)
    has_mtp = bool(head and head["tensors"])
    bf16 = bdir / gguf.file_name(cfg.model.name + "-base", gguf.Tier("BF16", False), has_mtp)
    if not bf16.is_file():
        gguf.convert(base_model_dir(cfg), bf16)
    files = {}
    for t in cfg.quant.base_tiers:
        tier = gguf.Tier(t.tier.value, t.imatrix)
        path = gguf.quantize(bf16, bdir / gguf.file_name(cfg.model.name + "-base", tier, has_mtp), tier, imat,
                             threads, logs / f"quantize-base-{tier.name}-{int(tier.imatrix)}.log")
        files[f"base:{tier.name}{'-imatrix' if tier.imatrix else ''}"] = {
            "path": str(path), **lineage.check_gguf(path, head or {"tensors": {}})}
        _log(f"base {path.name}")
    bf16.unlink()  # only the tiers are served
    return files


def run_safetensors(cfg: DictConfig, fmt: str, src: Path, out: Path, texts, head: dict | None) -> dict:
    results = {}
    if fmt == "fp8":
        t0 = time.perf_counter()
        info = export_fp8(src, out / "fp8", cfg.quant.fp8_block)
        results["FP8-block128"] = {"path": str(out / "fp8"), "seconds": round(time.perf_counter() - t0, 2), **info}
    else:
        from cardforge.core import __version__

        for tier in cfg.quant.nvfp4:
            t0 = time.perf_counter()
            d = out / f"nvfp4-{tier.value}"
            info = export_nvfp4(src, d, tier.value, calib_texts=texts[0][: cfg.quant.calib_samples],
                                producer_version=__version__)
            results[f"NVFP4-{tier.value.upper()}"] = {"path": str(d), "seconds": round(time.perf_counter() - t0, 2), **info}
    for key, info in results.items():
        d = Path(info["path"])
        if head and head["tensors"]:
            info.update(lineage.check_safetensors(d, head))
        info.update(size_gb_gib(dir_size(d)))
        _log(f"{key}: {info['GB']} GB in {info['seconds']} s")
    return results


def table(results: dict) -> str:
    rows = ["| file | size GB | size GiB | KLD vs BF16 | PPL | same top-1 % | MTP | loads (draft_n) |",
            "|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        kld = f"{r['kld_mean']:.5f}" if "kld_mean" in r else "—"
        ppl = f"{r['ppl']:.3f}" if "ppl" in r else "—"
        top = f"{r['same_top_p']:.2f}" if "same_top_p" in r else "—"
        loads = f"yes ({r.get('draft_n', 0)})" if r.get("load_ok") else ("—" if "load_ok" not in r else "NO")
        rows.append(f"| {key} | {r['GB']} | {r['GiB']} | {kld} | {ppl} | {top} | {r.get('mtp_check', 'none')} | {loads} |")
    return "\n".join(rows) + "\n"


def run(cfg: DictConfig) -> dict:
    src = source_dir(cfg)
    shard_files(src)  # fails with one line if src is not a checkpoint
    read_config(src)
    head = mtp_manifest(src) if cfg.model.has_mtp else None
    if cfg.model.has_mtp and not head["tensors"]:
        raise UserError(f"{src} has no mtp.* tensors but model.has_mtp=true: the head was lost before quant "
                        "(re-run the merge stage, or set model.has_mtp=false for a model without one)")
    out = Path(cfg.paths.outputs) / "quant"
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)  # once: the 248k-token vocabulary takes seconds to load
    calib, held, held_out = calibration.split(calibration.load_texts(calibration_files(cfg), tokenizer),
                                              cfg.quant.heldout_fraction)
    texts = (calib, held)
    with tracking.stage_run(cfg, "quant"):
        origin = ("retrained" if (src / "mtp_manifest.retrained.json").is_file() else "grafted") if head else "none"
        mlflow.set_tags({"quant.source": str(src), "quant.mtp_head": str(bool(head and head["tensors"])),
                         "quant.mtp_head_origin": origin, "quant.mtp_head_sha256": (head or {}).get("shard_sha256") or "",
                         "quant.kld_on": "held-out text" if held_out else "calibration text (too few to hold out)"})
        results: dict[str, dict] = {}
        for fmt in formats(cfg):
            t0 = time.perf_counter()
            results.update(run_gguf(cfg, src, out, texts, head, tokenizer) if fmt == "gguf"
                           else run_safetensors(cfg, fmt, src, out, texts, head))
            mlflow.log_metric(f"quant.{fmt}.seconds", time.perf_counter() - t0)
        if "gguf" in formats(cfg) and cfg.quant.load_check:
            from cardforge.quant.load_check import check_all

            check_all(cfg, results)
        for key, r in results.items():
            for metric in ("GB", "GiB", "kld_mean", "kld_p99", "ppl", "same_top_p", "seconds"):
                if metric in r:
                    mlflow.log_metric(f"{key}.{metric}", r[metric])
        summary = {"source": str(src), "llama_cpp": llama_cpp.release_info(), "files": results,
                   "kld_text": "held-out" if held_out else "calibration (too few texts to hold any out)",
                   "mtp_manifest": head}
        atomic_write_json(out / "quant_results.json", summary)
        atomic_write_text(out / "quant_table.md", table(results))
        mlflow.log_artifact(str(out / "quant_results.json"), "quant")
        mlflow.log_artifact(str(out / "quant_table.md"), "quant")
        _log("\n" + table(results))
    return {k: {m: v for m, v in r.items() if m != "seconds"} for k, r in results.items()}
