"""The quant stage: GGUF tiers (imatrix) + FP8 block-128 + NVFP4 W4A16/W4A4, each checked for its MTP head.

Run as: python -m cardforge.quant [format=gguf|fp8|nvfp4] [quant.source=DIR] [quant.calibration=FILE]
Outputs under <paths.outputs>/quant/: gguf/, fp8/, nvfp4-w4a16/, nvfp4-w4a4/, quant_results.json, quant_table.md.

Every step (convert, imatrix, each llama-quantize, each llama-perplexity KLD, each llama-server load check,
FP8, each NVFP4 tier) is a `schedule.Step`; on a small model they run side by side, one thread each (see
`parallel_slots`), and each one's wall seconds are logged to MLflow as `quant.time.<step>_s`.
"""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
from omegaconf import DictConfig

from cardforge.core import llama_cpp, tracking
from cardforge.core.artifacts import MERGED_MANIFEST, RETRAINED_MANIFEST, Outputs, QuantOutputs, Tier
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_json, atomic_write_text
from cardforge.core.paths import cache_dir
from cardforge.core.models.mtp import mtp_manifest, read_mtp_tensors
from cardforge.quant import calibration, gguf, lineage
from cardforge.quant.checkpoint import dir_size, read_config, shard_files, size_gb_gib
from cardforge.quant.safetensors_export import export_fp8, export_nvfp4
from cardforge.quant.schedule import Outcome, Step, run_steps

# Up to this checkpoint size the steps run side by side, one thread each: the tiny model's steps are mostly
# single-threaded (vocabulary loading, the converter's Python), and several small GGUFs fit in memory at once.
# Above it (the 27B card model) they run one at a time with every thread, as before.
PARALLEL_MAX_BYTES = 4 * 10**9


def source_dir(cfg: DictConfig) -> Path:
    if cfg.quant.source:
        return Path(cfg.quant.source)
    if cfg.mtp.enabled:  # the MTP stage's checkpoint: merge's, with the retrained head
        retrained = Outputs(cfg).mtp.model
        if not retrained.is_dir():
            raise UserError(f"mtp.enabled=true but no retrained checkpoint at {retrained}: run `make mtp` "
                            "first, or set mtp.enabled=false to quantize the merged model with the grafted head")
        return retrained
    merged = Outputs(cfg).merge.model
    if not merged.is_dir():
        raise UserError(f"no merged model at {merged}: run `make merge` first or set quant.source=DIR")
    return merged


def calibration_files(cfg: DictConfig) -> list[Path]:
    """quant.calibration, else the data stage's accepted set followed by its rejected set (more teacher text
    on the task distribution; see cardforge.quant.calibration)."""
    if cfg.quant.calibration:
        return [Path(cfg.quant.calibration)]
    data = Outputs(cfg).data
    return [data.trajectories, data.rejections]


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


# --- the MTP head every output is checked against ---


@dataclass
class Head:
    manifest: dict  # the stored manifest (name, shape, dtype, sha256 per mtp.* tensor)
    origin: str  # the manifest file it was read from, or how it was obtained
    tensors: dict  # the checkpoint's own head (equal to the manifest: checked), for the GGUF value checks

    @property
    def present(self) -> bool:
        return bool(self.manifest["tensors"])


def source_head(cfg: DictConfig, src: Path) -> Head:
    """The stored manifest of `src` (merge: <outputs>/merge/mtp_manifest.merged.json; mtp stage:
    mtp/model/mtp_manifest.retrained.json), after checking that `src`'s actual head is the one it describes.
    A quant.source=DIR without a stored manifest (a checkpoint no stage of ours wrote) is its own reference."""
    actual = mtp_manifest(src)
    if not actual["tensors"]:
        raise UserError(f"{src} has no mtp.* tensors but model.has_mtp=true: the head was lost before quant "
                        "(re-run the merge stage, or set model.has_mtp=false for a model without one)")
    stored_path = lineage.stored_manifest_path(src)
    if stored_path is None:
        if not cfg.quant.source:
            want = src / RETRAINED_MANIFEST if src.parent.name == "mtp" else src.parent / MERGED_MANIFEST
            raise UserError(f"no stored MTP manifest for {src} (expected {want}, written by the stage that wrote the "
                            "checkpoint): re-run that stage")
        _log(f"{src} has no stored MTP manifest: its own head is the reference")
        return Head(actual, f"computed from {src} (no stored manifest)", read_mtp_tensors(src))
    stored = lineage.load_manifest(stored_path)
    lineage.check_source(src, stored, stored_path, actual=actual)
    return Head(stored, str(stored_path), read_mtp_tensors(src))


def base_head(cfg: DictConfig, base: Path) -> Head:
    """The base model's head (base tiers keep the base's own head): the merge stage's mtp_manifest.base.json
    when this run quantizes the pipeline's outputs, else the base checkpoint's."""
    stored_path = Outputs(cfg).merge.base_manifest
    actual = mtp_manifest(base)
    if cfg.quant.source or not stored_path.is_file():
        return Head(actual, f"computed from {base}", read_mtp_tensors(base))
    stored = lineage.load_manifest(stored_path)
    lineage.check_source(base, stored, stored_path, actual=actual)
    return Head(stored, str(stored_path), read_mtp_tensors(base))


def _gguf_lineage(path: Path, head: Head | None) -> dict:
    if head is None:
        return lineage.check_gguf(path, {"tensors": {}})
    return lineage.check_gguf(path, head.manifest, head.tensors)


def base_model_dir(cfg: DictConfig) -> Path:
    if cfg.model.embedded:
        from cardforge.core.models import prepare

        return prepare(cfg.model.name)
    path = Path(cfg.model.path)
    if not path.is_dir():
        raise UserError(f"model.path={cfg.model.path} is not a local directory: quant.base_tiers needs the base "
                        "checkpoint on disk (download it, or set quant.base_tiers=[])")
    return path


# --- steps ---


def base_gguf_cache(cfg: DictConfig, base: Path) -> Path | None:
    """Where the base model's BF16 GGUF is kept between runs: the base never changes from run to run, so its
    conversion (~13 CPU-seconds on the tiny model, as much as the distilled model's) is done once per base
    checkpoint and llama.cpp release. Embedded (small) bases only: a 27B base would take 54 GB of cache."""
    if not cfg.model.embedded or sum(f.stat().st_size for f in shard_files(base)) > PARALLEL_MAX_BYTES:
        return None
    h = hashlib.sha256(f"{llama_cpp.VERSION}\n{base.resolve()}".encode())
    for f in sorted(p for p in base.iterdir() if p.is_file()):  # a rebuilt model has new mtimes: a new key
        st = f.stat()
        h.update(f"\n{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    d = cache_dir() / "quant" / "base-gguf"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{base.name}-{h.hexdigest()[:12]}-BF16.gguf"


def parallel_slots(src: Path, threads: int) -> int:
    size = sum(f.stat().st_size for f in shard_files(src))
    return max(1, threads) if size <= PARALLEL_MAX_BYTES else 1


@dataclass
class Texts:
    calib: list[str]
    held: list[str]
    held_out: bool
    tokenizer: Any


def calibration_step(cfg: DictConfig, src: Path, out: Path, files: list[Path]) -> Callable[[], Texts]:
    def run() -> Texts:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(src)  # once: the 248k-token vocabulary takes seconds to load
        calib, held, held_out = calibration.split(calibration.load_texts(files, tokenizer), cfg.quant.heldout_fraction)
        need = 2 * cfg.quant.imatrix_ctx + 64  # llama-imatrix / llama-perplexity refuse text shorter than two contexts
        atomic_write_text(out / "calibration.txt", calibration.at_least("\n\n".join(calib), need, tokenizer))
        atomic_write_text(out / "heldout.txt", calibration.at_least("\n\n".join(held), need, tokenizer))
        return Texts(calib, held, held_out, tokenizer)

    return run


def _key(tier: gguf.Tier) -> str:
    return tier.key


class GgufPlan:
    """The GGUF steps and how their outcomes become quant_results.json's entries."""

    def __init__(self, cfg: DictConfig, src: Path, out: Path, head: Head | None, base: tuple[Path, Head | None] | None,
                 threads: int, serve: dict):
        q = cfg.quant
        self.cfg, self.src, self.out, self.head, self.base, self.threads, self.serve = cfg, src, out, head, base, threads, serve
        self.gdir, self.logs = out / "gguf", out / "logs"
        name, has_mtp = cfg.model.name, bool(head and head.present)
        self.bf16 = self.gdir / gguf.file_name(name, gguf.Tier("BF16", False), has_mtp)
        self.tiers = [gguf.Tier.of(t) for t in q.gguf_tiers]
        if q.compare_no_imatrix and any(t.name == "Q4_K_M" and t.imatrix for t in self.tiers):
            self.tiers.append(gguf.Tier("Q4_K_M", False))  # the side-by-side the card's choice of imatrix rests on
        self.base_tiers = [gguf.Tier.of(t) for t in q.base_tiers] if base else []
        for t in self.tiers + self.base_tiers:  # an unknown tier fails now, not after minutes of converting
            if t.name not in gguf.KNOWN_TIERS:
                raise gguf.GgufError(f"unknown GGUF tier {t.name!r}; choose one of: {', '.join(sorted(gguf.KNOWN_TIERS))}")
        self.need_imatrix = any(t.imatrix for t in self.tiers + self.base_tiers)
        self.bdir = self.gdir / "base"
        self.gdir.mkdir(parents=True, exist_ok=True)
        if self.base_tiers:
            self.bdir.mkdir(exist_ok=True)
        self.base_bf16 = self.bdir / gguf.file_name(name + "-base", gguf.Tier("BF16", False), has_mtp)
        self.base_src = self.base_bf16  # the cached copy instead, where there is one
        self.base_cache = base_gguf_cache(cfg, base[0]) if base else None
        self.base_logits = out / "bf16-logits.bin"
        self.imatrix_file = QuantOutputs(out).imatrix
        # a vision-language checkpoint (the real Qwen3.6 layout): its tower as llama.cpp's projector file
        self.vision = gguf.has_vision(src)
        self.mmproj = self.gdir / gguf.mmproj_name(name)

    def _path(self, tier: gguf.Tier, base: bool = False) -> Path:
        has_mtp = bool(self.head and self.head.present)
        if base:
            return self.bdir / gguf.file_name(self.cfg.model.name + "-base", tier, has_mtp)
        return self.gdir / gguf.file_name(self.cfg.model.name, tier, has_mtp)

    def _convert(self) -> dict:
        gguf.convert(self.src, self.bf16)
        return {"path": str(self.bf16), **_gguf_lineage(self.bf16, self.head)}

    def _convert_base(self) -> str:
        if self.base_cache is None:
            gguf.convert(self.base[0], self.base_bf16)
            return "converted"
        if self.base_cache.is_file():
            self.base_src = self.base_cache
            return f"cached: {self.base_cache}"
        # a private name, then an atomic rename: two runs converting the same base never share a file
        tmp = self.base_cache.with_name(f".{self.base_cache.stem}.{os.getpid()}.{threading.get_ident()}.gguf")
        try:
            gguf.convert(self.base[0], tmp)
            os.replace(tmp, self.base_cache)
        finally:
            tmp.unlink(missing_ok=True)
        self.base_src = self.base_cache
        return f"converted into the cache: {self.base_cache}"

    def _imatrix(self) -> None:
        q = self.cfg.quant
        gguf.imatrix(self.bf16, self.out / "calibration.txt", self.imatrix_file, q.imatrix_chunks, q.imatrix_ctx,
                     self.threads, self.logs / "imatrix.log")

    def _quantize(self, tier: gguf.Tier, base: bool) -> dict:
        t0 = time.perf_counter()
        src = self.base_src if base else self.bf16
        log = self.logs / f"quantize-{'base-' if base else ''}{tier.name}-{int(tier.imatrix)}.log"
        path = gguf.quantize(src, self._path(tier, base), tier, self.imatrix_file if tier.imatrix else None,
                             self.threads, log)
        info = {"path": str(path)}
        if not base:
            info["seconds"] = round(time.perf_counter() - t0, 2)
        info.update(_gguf_lineage(path, self.base[1] if base else self.head))
        return info

    def _kld_base(self) -> None:
        q = self.cfg.quant
        gguf.kld_base(self.bf16, self.out / "heldout.txt", self.base_logits, q.imatrix_ctx, q.kld_chunks,
                      self.threads, self.logs / "kld-base.log")

    def _convert_mmproj(self) -> dict:
        gguf.convert_mmproj(self.src, self.mmproj)
        return {"path": str(self.mmproj)}

    def _load_vision(self) -> dict:
        from cardforge.quant import load_check

        return load_check.check_vision(self.serve, self.bf16, self.mmproj, load_check.log_path(self.out, "vision"))

    def vision_summary(self, o: Outcome) -> dict | None:
        """quant_results.json's "mmproj": the projector file, its size and the image-request check."""
        if not self.vision:
            return None
        info = dict(o.results["convert_mmproj"])
        info.update(size_gb_gib(self.mmproj.stat().st_size))
        info["served_with"] = str(self.bf16)
        info.update(o.results.get("load_vision") or {})
        return info

    def _kld(self, tier: gguf.Tier) -> dict:
        key = _key(tier)
        return gguf.kld(self._path(tier), self.base_logits, self.cfg.quant.imatrix_ctx, self.threads,
                        self.logs / f"kld-{key}.log")

    def _load(self, key: str, path: Path) -> Callable[[], dict]:
        from cardforge.quant import load_check

        return lambda: load_check.check_one(self.serve, path, load_check.log_path(self.out, key))

    def steps(self, middle: list[Step]) -> list[Step]:
        """In priority order: the imatrix chain (the longest path) first, `middle` (the safetensors formats),
        then the short KLD and load-check steps that fill the cores at the end."""
        s: list[Step] = [Step("convert", self._convert, group="gguf"),
                         Step("calibration", lambda: None)]  # placeholder: the caller's calibration step
        if self.base:
            s.append(Step("convert_base", self._convert_base, group="gguf"))
        if self.need_imatrix:
            s.append(Step("imatrix", self._imatrix, ("convert", "calibration"), group="gguf"))
        for t in [t for t in self.tiers if t.imatrix]:
            s.append(Step(f"quantize_{_key(t)}", lambda t=t: self._quantize(t, False), ("convert", "imatrix"), "gguf"))
        for t in self.base_tiers:
            after = ("convert_base", "imatrix") if t.imatrix else ("convert_base",)
            s.append(Step(f"quantize_base_{_key(t)}", lambda t=t: self._quantize(t, True), after, "gguf"))
        s.append(Step("kld_base", self._kld_base, ("convert", "calibration"), group="gguf"))
        if self.vision:
            s.append(Step("convert_mmproj", self._convert_mmproj, group="gguf"))
        for t in [t for t in self.tiers if not t.imatrix]:
            s.append(Step(f"quantize_{_key(t)}", lambda t=t: self._quantize(t, False), ("convert",), "gguf"))
        s += middle
        for t in self.tiers:
            s.append(Step(f"kld_{_key(t)}", lambda t=t: self._kld(t), ("kld_base", f"quantize_{_key(t)}"), "gguf"))
        if self.cfg.quant.load_check:
            s.append(Step("load_BF16", self._load("BF16", self.bf16), ("convert",), "gguf"))
            if self.vision:
                s.append(Step("load_vision", self._load_vision, ("convert", "convert_mmproj"), "gguf"))
            for t in self.tiers:
                s.append(Step(f"load_{_key(t)}", self._load(_key(t), self._path(t)), (f"quantize_{_key(t)}",), "gguf"))
            for t in self.base_tiers:
                key = t.result_key(base=True)
                s.append(Step(f"load_base_{_key(t)}", self._load(key, self._path(t, True)),
                              (f"quantize_base_{_key(t)}",), "gguf"))
        return s

    def collect(self, o: Outcome) -> dict:
        files: dict[str, dict] = {"BF16": dict(o.results["convert"])}
        for t in self.tiers:
            files[t.result_key()] = dict(o.results[f"quantize_{_key(t)}"])
        for t in self.base_tiers:
            files[t.result_key(base=True)] = dict(o.results[f"quantize_base_{_key(t)}"])
        for key, info in files.items():
            info.update(size_gb_gib(Path(info["path"]).stat().st_size))
            if f"kld_{key}" in o.results:
                info.update(o.results[f"kld_{key}"])
            load = f"load_{key.replace(':', '_')}"
            if load in o.results:
                info.update(o.results[load])
        self.base_logits.unlink(missing_ok=True)  # large and reproducible
        self.base_bf16.unlink(missing_ok=True)  # only the base tiers are served (a cached copy stays cached)
        return files


def _safetensors_tier(cfg: DictConfig, kind: str, src: Path, out: Path, calib: Callable[[], list[str]],
                      head: dict | None, tokenizer: Callable[[], Any] = lambda: None) -> Callable[[], tuple[str, dict]]:
    """One FP8 or NVFP4 tier ('fp8', 'w4a16', 'w4a4'): export, then the MTP lineage check."""

    def run() -> tuple[str, dict]:
        t0 = time.perf_counter()
        if kind == "fp8":
            key, d = "FP8-block128", out / "fp8"
            info = export_fp8(src, d, cfg.quant.fp8_block)
        else:
            from cardforge.core import __version__

            key, d = f"NVFP4-{kind.upper()}", out / f"nvfp4-{kind}"
            info = export_nvfp4(src, d, kind, calib_texts=calib()[: cfg.quant.calib_samples],
                                producer_version=__version__, tokenizer=tokenizer())
        info = {"path": str(d), "seconds": round(time.perf_counter() - t0, 2), **info}
        if head and head["tensors"]:
            info.update(lineage.check_safetensors(d, head))
        info.update(size_gb_gib(dir_size(d)))
        return key, info

    return run


def run_safetensors(cfg: DictConfig, fmt: str, src: Path, out: Path, texts, head: dict | None) -> dict:
    """FP8 (fmt='fp8') or every configured NVFP4 tier, one after another (the stage itself schedules them)."""
    kinds = ["fp8"] if fmt == "fp8" else [t.value for t in cfg.quant.nvfp4]
    results = {}
    for kind in kinds:
        key, info = _safetensors_tier(cfg, kind, src, out, lambda: texts[0], head)()
        results[key] = info
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


def vision_line(mmproj: dict | None) -> str:
    if not mmproj:
        return ""
    check = (f"; llama-server with the BF16 GGUF answered an image request ({mmproj['vision_prompt_tokens']} prompt "
             f"tokens vs {mmproj['text_prompt_tokens']} without the image)" if mmproj.get("vision_ok") else "")
    return f"\nVision projector: {Path(mmproj['path']).name}, {mmproj['GB']} GB ({mmproj['GiB']} GiB){check}\n"


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _metric(step: str) -> str:
    return f"quant.time.{step.replace(':', '_')}_s"


def disk_need(cfg: DictConfig, src: Path, fmts) -> int:
    """Bytes the stage will write beyond what its folder already holds (reruns replace files), from the source
    checkpoint's size: the BF16 GGUF and each tier at its bits per weight, FP8 ~half, each NVFP4 tier ~30%."""
    from cardforge.core.io import dir_bytes
    from cardforge.quant.sizes import GGUF_BPW

    size = dir_bytes(src)
    ratio = 0.0
    if "gguf" in fmts:
        tiers = [Tier.of(t).name for t in cfg.quant.gguf_tiers]
        tiers += ["Q4_K_M"] if cfg.quant.compare_no_imatrix else []
        tiers += [Tier.of(t).name for t in (cfg.quant.base_tiers or [])]
        ratio += 1.0 + sum(GGUF_BPW.get(t, 8.0) / 16 for t in tiers)
    ratio += 0.55 if "fp8" in fmts else 0.0
    ratio += 0.3 * len(cfg.quant.nvfp4) if "nvfp4" in fmts else 0.0
    existing = dir_bytes(Outputs(cfg).quant.dir)
    return max(64 << 20, int(size * ratio) - existing)


@dataclass
class QuantResult:
    """What the stage hands on (quant_results.json holds more: timings, sources, lineage)."""
    # quant_results.json's "files" without wall seconds: a rerun's timing changes no fingerprint downstream
    files: dict[str, dict]


@dataclass
class Inputs:
    """What the stage reads, checked before anything is written (one line each when it is wrong)."""
    src: Path  # the checkpoint to quantize
    head: Head | None  # its MTP head (model.has_mtp)
    base: tuple[Path, Head | None] | None  # the base checkpoint and its head, for quant.base_tiers
    fmts: list[str]
    calibration: list[Path]


def check_inputs(cfg: DictConfig) -> Inputs:
    src = source_dir(cfg)
    shard_files(src)  # fails with one line if src is not a checkpoint
    read_config(src)
    head = source_head(cfg, src) if cfg.model.has_mtp else None
    fmts = formats(cfg)
    base = None
    if "gguf" in fmts and cfg.quant.base_tiers:
        bdir = base_model_dir(cfg)
        base = (bdir, base_head(cfg, bdir) if cfg.model.has_mtp else None)
    files = calibration_files(cfg)
    calibration.require(files)
    return Inputs(src, head, base, fmts, files)


def prepare_output(cfg: DictConfig, inp: Inputs) -> Path:
    """<outputs>/quant, after checking it can take what the stage will write (read-only or full: one line,
    before hours of work)."""
    from cardforge.core.io import preflight_output

    out = Outputs(cfg).quant.dir
    preflight_output(out, disk_need(cfg, inp.src, inp.fmts), stage="quant")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "gguf").mkdir(parents=True, exist_ok=True)
    return out


class Schedule:
    """Every step of this run (calibration, the GGUF plan, FP8/NVFP4 tiers) and how many run side by side."""

    def __init__(self, cfg: DictConfig, inp: Inputs, out: Path):
        self.cfg, self.inp, self.out = cfg, inp, out
        threads = int(cfg.quant.threads or os.cpu_count() or 1)
        self.slots = parallel_slots(inp.src, threads)
        self.step_threads = max(1, threads // self.slots)
        self.texts: Texts | None = None  # set by the calibration step
        self._torch_threads: int | None = None  # torch's own setting, restored after the steps
        manifest = inp.head.manifest if inp.head else None
        self.middle: list[Step] = []
        if "fp8" in inp.fmts:  # after calibration: its imports of torch/transformers then happen in one thread
            self.middle.append(Step("fp8", _safetensors_tier(cfg, "fp8", inp.src, out, self._calib, manifest),
                                    ("calibration",), "fp8"))
        if "nvfp4" in inp.fmts:
            for t in cfg.quant.nvfp4:
                self.middle.append(Step(f"nvfp4_{t.value}", _safetensors_tier(cfg, t.value, inp.src, out, self._calib,
                                                                              manifest, self._tokenizer),
                                        ("calibration",), "nvfp4"))
        self.plan: GgufPlan | None = None
        if "gguf" in inp.fmts:
            from cardforge.quant.load_check import serve_options

            self.plan = GgufPlan(cfg, inp.src, out, inp.head, inp.base, self.step_threads,
                                 serve_options(cfg, self.step_threads if self.slots > 1 else None))
            self.steps = [Step("calibration", self._calibrate) if s.name == "calibration" else s
                          for s in self.plan.steps(self.middle)]
        else:
            self.steps = [Step("calibration", self._calibrate), *self.middle]

    def _calib(self) -> list[str]:
        return self.texts.calib

    def _tokenizer(self):
        return self.texts.tokenizer

    def _calibrate(self) -> None:
        self.texts = calibration_step(self.cfg, self.inp.src, self.out, self.inp.calibration)()
        if self.slots > 1:  # in-process torch work (FP8, NVFP4 calibration) shares the cores with the other steps
            import torch

            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(self.step_threads)

    def execute(self) -> Outcome:
        from cardforge.core.progress import Progress

        _log(f"{len(self.steps)} steps, {self.slots} at a time, {self.step_threads} thread(s) each")
        try:
            bar = Progress(len(self.steps), "quant", "steps", every_s=0)
            bar.start(f"{self.slots} at a time")
            return run_steps(self.steps, self.slots, on_done=lambda name, s: bar.step(note=f"{name} in {s:.1f} s"))
        finally:
            if self._torch_threads is not None:
                import torch

                torch.set_num_threads(self._torch_threads)

    def collect(self, o: Outcome) -> tuple[dict[str, dict], dict | None]:
        """quant_results.json's "files" (GGUF tiers, then FP8/NVFP4) and its "mmproj"."""
        results: dict[str, dict] = self.plan.collect(o) if self.plan else {}
        mmproj = self.plan.vision_summary(o) if self.plan else None
        for s in self.middle:
            key, info = o.results[s.name]
            results[key] = info
        return results, mmproj


def tag_source(inp: Inputs, sched: Schedule) -> None:
    head, manifest = inp.head, inp.head.manifest if inp.head else None
    origin = ("retrained" if (inp.src / RETRAINED_MANIFEST).is_file() else "grafted") if head else "none"
    mlflow.set_tags({"quant.source": str(inp.src), "quant.mtp_head": str(bool(head and head.present)),
                     "quant.mtp_head_origin": origin,
                     "quant.mtp_head_sha256": (manifest or {}).get("shard_sha256") or "",
                     "quant.mtp_manifest": head.origin if head else "none",
                     "quant.parallel": f"{sched.slots} steps x {sched.step_threads} thread(s)"})


def log_timings(sched: Schedule, o: Outcome, t_setup: float, total: float, cpu_start: float) -> tuple[dict, dict]:
    """(quant_results.json's "timings", the MLflow metrics logged: per-step wall and CPU seconds, totals)."""
    # CPU per step: the step's thread plus the llama.cpp processes it ran (the converter runs in
    # cardforge.core, which does not report it, so the convert steps show their thread's share only)
    # "end" is rounded from the raw end, not start + seconds: rounding is monotonic, so a step that began
    # after another ended still reads start >= end after rounding (start + seconds can be 0.01 off)
    timings = {name: {"start": round(t.start + t_setup, 2), "end": round(t.end + t_setup, 2),
                      "seconds": round(t.seconds, 2),
                      "cpu_seconds": None if name.startswith("convert") else round(t.cpu, 2)}
               for name, t in o.timings.items()}
    metrics = {_metric(name): t.seconds for name, t in o.timings.items()}
    metrics.update({f"quant.cpu.{name.replace(':', '_')}_s": t.cpu for name, t in o.timings.items()
                    if not name.startswith("convert")})
    metrics.update({_metric("setup"): t_setup, _metric("total"): total, "quant.time.cpu_s": _cpu_seconds() - cpu_start,
                    "quant.parallel_slots": sched.slots})
    for fmt in sched.inp.fmts:
        metrics[f"quant.{fmt}.seconds"] = o.span(fmt, sched.steps)
    mlflow.log_metrics(metrics)
    return timings, metrics


def write_results(sched: Schedule, o: Outcome, results: dict, mmproj: dict | None, timings: dict,
                  total: float) -> None:
    """quant_results.json and quant_table.md, written and logged with the per-file metrics."""
    inp, held_out = sched.inp, sched.texts.held_out
    for key, r in results.items():
        for metric in ("GB", "GiB", "kld_mean", "kld_p99", "ppl", "same_top_p", "seconds"):
            if metric in r:
                mlflow.log_metric(f"{key}.{metric}", r[metric])
    summary = {"source": str(inp.src), "llama_cpp": llama_cpp.release_info(), "files": results,
               "kld_text": "held-out" if held_out else "calibration (too few texts to hold any out)",
               "mtp_manifest": inp.head.manifest if inp.head else None,
               "mtp_manifest_source": inp.head.origin if inp.head else None,
               "base_mtp_manifest_source": inp.base[1].origin if inp.base and inp.base[1] else None,
               "base_bf16": o.results.get("convert_base"),
               "parallel": {"slots": sched.slots, "threads_per_step": sched.step_threads},
               "mmproj": mmproj, "timings": timings, "total_seconds": round(total, 2)}
    if mmproj:
        mlflow.log_metrics({"mmproj.GB": mmproj["GB"], "mmproj.vision_ok": float(mmproj.get("vision_ok", False))})
    written = QuantOutputs(sched.out)
    atomic_write_json(written.results_file, summary)
    atomic_write_text(written.table, table(results) + vision_line(mmproj))
    mlflow.log_artifact(str(written.results_file), "quant")
    mlflow.log_artifact(str(written.table), "quant")


def run(cfg: DictConfig) -> QuantResult:
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    inp = check_inputs(cfg)
    out = prepare_output(cfg, inp)
    sched = Schedule(cfg, inp, out)  # an unknown tier fails here, before the MLflow run
    with tracking.stage_run(cfg, "quant"):
        tag_source(inp, sched)
        t_setup = time.perf_counter() - t_start
        outcome = sched.execute()
        results, mmproj = sched.collect(outcome)
        held_out = sched.texts.held_out
        mlflow.set_tag("quant.kld_on", "held-out text" if held_out else "calibration text (too few to hold out)")
        if sched.plan and sched.plan.need_imatrix:
            mlflow.log_artifact(str(sched.plan.imatrix_file), "quant")
        total = time.perf_counter() - t_start
        timings, metrics = log_timings(sched, outcome, t_setup, total, cpu_start)
        write_results(sched, outcome, results, mmproj, timings, total)
        _log("\n" + table(results))
        _log(f"quant stage: {total:.1f} s wall, {metrics['quant.time.cpu_s']:.1f} s CPU "
             f"({sched.slots} steps at a time)")
    return QuantResult({k: {m: v for m, v in r.items() if m != "seconds"} for k, r in results.items()})
