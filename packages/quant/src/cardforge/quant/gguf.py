"""GGUF tiers with llama.cpp's own tools (the pinned release): convert -> imatrix -> quantize -> perplexity/KLD.

File names follow the card: `<name>-MTP-<TIER>[-imatrix].gguf` (no `-MTP` for a model without a head).
A vision-language checkpoint (config.json with a `vision_config`, as Qwen3.5/3.6 are) also gets its vision
projector the way llama.cpp serves Qwen3.5 images: `convert_hf_to_gguf.py --mmproj` writes the tower + merger
as `mmproj-<name>-BF16.gguf` (projector type qwen3vl), loaded with `llama-server -m TEXT.gguf --mmproj FILE`;
the text GGUFs carry the language model and the MTP head only (the converter drops model.visual.*).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from cardforge.core import llama_cpp
from cardforge.core.artifacts import Tier  # the one GGUF tier type (cardforge.quant.gguf.Tier for callers)
from cardforge.core.errors import UserError
from cardforge.quant.schedule import add_child_cpu

KNOWN_TIERS = {"BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q5_0", "Q4_0", "IQ4_XS"}


class GgufError(UserError):
    pass


def file_name(model: str, tier: Tier, has_mtp: bool) -> str:
    return f"{model}{'-MTP' if has_mtp else ''}-{tier.key}.gguf"


def _run(cmd: list[str], what: str, log: Path | None = None) -> str:
    """Run a llama.cpp tool; its stdout then its stderr go to `log` and are returned. The tool's CPU seconds
    are charged to the running step (cardforge.quant.schedule)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, text=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # wait4: this child's own rusage, exact under concurrency
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        add_child_cpu(usage.ru_utime + usage.ru_stime)
        out.seek(0)
        err.seek(0)
        text = out.read() + err.read()
    if log:
        log.write_text(text)
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise GgufError(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd[:3]))} ...\n{tail}")
    return text


def has_vision(model_dir: Path) -> bool:
    import json

    return "vision_config" in json.loads((Path(model_dir) / "config.json").read_text())


def mmproj_name(model: str) -> str:
    """llama.cpp's convention (`-hf` picks a repo file whose name starts with mmproj): mmproj-<name>-BF16.gguf."""
    return f"mmproj-{model}-BF16.gguf"


def convert_mmproj(model_dir: Path, out: Path) -> Path:
    """The vision tower + merger of a VL checkpoint as llama.cpp's projector file (BF16; patch embedding F32)."""
    try:
        return llama_cpp.convert_hf_to_gguf(model_dir, out, outtype="bf16", extra_args=["--mmproj"])
    except RuntimeError as e:
        raise GgufError(f"llama.cpp {llama_cpp.VERSION}'s converter could not write the vision projector of "
                        f"{model_dir}: {str(e).splitlines()[-1]}") from None


def convert(model_dir: Path, out: Path) -> Path:
    try:
        return llama_cpp.convert_hf_to_gguf(model_dir, out, outtype="bf16")
    except RuntimeError as e:
        arch = re.search(r"Model (\w+) is not supported", str(e))
        if arch:
            raise GgufError(f"llama.cpp {llama_cpp.VERSION}'s converter does not know architecture {arch.group(1)}"
                            f" ({model_dir}/config.json)") from None
        raise


def imatrix(bf16: Path, calib: Path, out: Path, chunks: int, ctx: int, threads: int, log: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp")
    _run([llama_cpp.binary("llama-imatrix"), "-m", bf16, "-f", calib, "-o", tmp, "--chunks", chunks,
          "-c", ctx, "-t", threads, "--no-ppl"], "llama-imatrix", log)
    os.replace(tmp, out)
    return out


def quantize(bf16: Path, out: Path, tier: Tier, imatrix_file: Path | None, threads: int, log: Path) -> Path:
    if tier.name not in KNOWN_TIERS:
        raise GgufError(f"unknown GGUF tier {tier.name!r}; choose one of: {', '.join(sorted(KNOWN_TIERS))}")
    tmp = out.with_name(f".{out.name}.tmp")
    cmd = [llama_cpp.binary("llama-quantize")]
    if tier.imatrix:
        cmd += ["--imatrix", imatrix_file]
    _run([*cmd, bf16, tmp, tier.name, threads], f"llama-quantize {tier.name}", log)
    os.replace(tmp, out)
    return out


_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


def kld_base(bf16: Path, text: Path, base_logits: Path, ctx: int, chunks: int, threads: int, log: Path) -> None:
    _run([llama_cpp.binary("llama-perplexity"), "-m", bf16, "-f", text, "-c", ctx, "--chunks", chunks,
          "-t", threads, "--kl-divergence-base", base_logits], "llama-perplexity (base logits)", log)


def kld(model: Path, base_logits: Path, ctx: int, threads: int, log: Path) -> dict:
    """Mean KL divergence vs BF16, perplexity of the quantized model, same-top-token rate."""
    out = _run([llama_cpp.binary("llama-perplexity"), "-m", model, "--kl-divergence-base", base_logits,
                "--kl-divergence", "-c", ctx, "-t", threads], f"llama-perplexity KLD {model.name}", log)
    stats = {}
    for key, pattern in {
        "ppl": rf"Mean PPL\(Q\)\s*:\s*{_NUM}",
        "ppl_base": rf"Mean PPL\(base\)\s*:\s*{_NUM}",
        "kld_mean": rf"Mean\s+KLD:\s*{_NUM}",
        "kld_p99": rf"99\.0%\s+KLD:\s*{_NUM}",
        "same_top_p": rf"Same top p:\s*{_NUM}",
    }.items():
        m = re.search(pattern, out)
        if m:
            stats[key] = float(m.group(1))
    if "kld_mean" not in stats:
        raise GgufError(f"could not read the KLD summary of {model.name} from llama-perplexity (see {log})")
    return stats
