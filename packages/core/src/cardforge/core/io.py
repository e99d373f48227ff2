"""Atomic writes (a stage's outputs appear whole or not at all, so an interrupted stage loses nothing), preflight
checks of an output folder and a model path, and the one tolerant JSONL reader for data files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared like any written file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# weight files in any format: a derived checkpoint (merged, FP8, NVFP4) carries the non-weight files of its source
# byte for byte, never these (a base's pytorch_model.bin next to the merged safetensors would be the UN-merged
# model, shipped by release as part of the distilled repo)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")


def is_weight_file(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(WEIGHT_SUFFIXES)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- preflight: fail in one line before long work, not at the first checkpoint ---


def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes of the regular files under `path` (a file: its size; missing: 0)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(p):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def preflight_output(path: str | os.PathLike, need_bytes: int = 0, *, stage: str = "",
                     key: str = "paths.outputs", what: str = "") -> Path:
    """`path` can be created and written, and its filesystem has `need_bytes` free: else a `UserError` naming
    the folder, what is short (and `what` the need is made of) and the key to change."""
    from cardforge.core.errors import UserError

    path = Path(path)
    who = f"the {stage} stage" if stage else "this stage"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".preflight.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {path} ({e.strerror or e}): {who} writes its outputs there; make it "
                        f"writable or set {key}=A_WRITABLE_DIR") from None
    free = shutil.disk_usage(path).free
    if need_bytes and free < need_bytes:
        raise UserError(f"{path} has {_gib(free)} free but {who} needs about {_gib(need_bytes)}"
                        f"{f' ({what})' if what else ''}: free some space or set {key}=A_DIR_WITH_ROOM")
    return path


def check_model_path(path: str, key: str = "model.path") -> Path | str:
    """A local checkpoint folder, or a hub id ("owner/name") left to the loader: a path that names a folder which
    does not exist (absolute, relative, ~) is a `UserError`, not the hub's "Repo id must be in the form"."""
    from cardforge.core.errors import UserError

    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{key}={path}: the folder has no config.json, so it is not a Hugging Face checkpoint; "
                            f"point {key} at the folder holding config.json and *.safetensors")
        return p
    text = str(path)
    hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and all(text.split("/"))
    if hub_id and not p.exists():
        return text
    what = "is a file, not a folder" if p.exists() else "does not exist"
    raise UserError(f"{key}={path}: {what}; set {key} to a local checkpoint folder (config.json + *.safetensors) "
                    "or use an embedded model (experiment=tiny)")


# --- the one tolerant JSONL reader for data files ---


@dataclass
class JsonlRows:
    rows: list[tuple[int, dict]]  # (1-based line number, the parsed object)
    bad: list[str]  # "FILE:LINE: why" for each line skipped

    def summary(self, path: str | os.PathLike) -> str:
        return (f"{path}: skipped {len(self.bad)} bad line(s), kept {len(self.rows)}; first: {self.bad[0]}"
                if self.bad else "")


def read_jsonl_rows(path: str | os.PathLike, *, strict: bool = False, key: str = "trainer.skip_bad_lines"
                    ) -> JsonlRows:
    """Every line of a JSONL data file as a JSON object, with its line number. A torn last line (no trailing
    newline: a writer was killed) is always skipped; any other bad line (not JSON, not an object) is skipped
    and counted as "FILE:LINE: why", or, with `strict`, a `UserError` naming FILE:LINE and `key`."""
    from cardforge.core.errors import UserError

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a JSONL file") from None
    lines = raw.split(b"\n")
    torn = lines.pop() if lines else b""  # after the last newline: empty for a whole file
    out = JsonlRows([], [])
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            why = None if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            obj, why = None, f"not valid JSON ({getattr(e, 'msg', e)})"
        if why is None:
            out.rows.append((n, obj))
            continue
        where = f"{path}:{n}: {why}"
        if strict:
            raise UserError(f"{where}; fix or delete the line, or set {key}=true to skip bad lines")
        out.bad.append(where)
    if torn.strip():
        out.bad.append(f"{path}:{len(lines) + 1}: torn last line ({len(torn)} bytes, no newline: a writer was "
                       "interrupted)")
    return out


def check_port_free(host: str, port: int, key: str = "serve.port") -> None:
    """A fixed port something else listens on is one line suggesting `KEY=0` (pick a free port)."""
    import socket

    from cardforge.core.errors import UserError

    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, int(port)))
        except OSError as e:
            raise UserError(f"{host}:{port} is already in use ({e.strerror or e}); stop what listens there or set "
                            f"{key}=0 to pick a free port") from None


def check_gguf(path: str | os.PathLike, key: str = "serve.model_path") -> Path:
    """A GGUF whose header parses and whose tensor data is all in the file: else one line saying what is wrong
    (not GGUF at all, a torn header, truncated data: a killed writer) and how to get a good one."""
    from cardforge.core.errors import UserError

    path = Path(path)
    fix = f"rebuild it (make quant ARGS=\"force=[quant]\") or set {key} to another .gguf"
    if not path.is_file():
        raise UserError(f"{key}={path}: no such GGUF file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (starts with {magic!r}, not b'GGUF'); {fix}")
    from cardforge.core.llama_cpp import gguf_header

    try:
        header = gguf_header(path)
    except Exception as e:  # noqa: BLE001 - struct.error, a bad type id (KeyError), a bad length (ValueError)
        raise UserError(f"{path}: corrupt GGUF header ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                        f"{fix}") from None
    end = 0
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        for info in header["index"].values():
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(info["type"])]
            n = 1
            for d in info["shape"]:
                n *= int(d)
            end = max(end, info["offset"] + n // block * nbytes)
    except (ImportError, KeyError, ValueError):  # a type this gguf package does not know: offsets only
        end = max((i["offset"] for i in header["index"].values()), default=0)
    if end > size:
        raise UserError(f"{path} is truncated: {size} bytes, its tensors need {end} (a writer was killed?); {fix}")
    return path
