"""What a pipeline record pins besides the config: the code that ran the stage and the outputs it left.

Code version: a sha256 over the source files of the packages a stage runs (`StageSpec.packages`, e.g.
`cardforge.train` + `cardforge.core`), read from wherever Python imports them: an editable checkout (edits
not yet committed included: the files are what runs, whatever git says), a fresh clone, or an installed wheel
(no git at all) give the same hash for the same files. Plus the pinned llama.cpp release. A fixed bug
therefore reruns the stages whose code it touched, without `force=`.

Outputs: every file under `paths.outputs` that a stage's result names (a path, or a folder's files) gets its
sha256 recorded with its size and mtime. The skip check re-stats each file and re-hashes only those whose
size or mtime moved (a few seconds for the tiny chain, nothing for an untouched 27B one), so an output
rewritten by a standalone run (`python -m cardforge.train trainer.max_steps=80` overwriting the adapter) or
deleted is seen, and the stage reruns saying which file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from cardforge.core.io import sha256_file

SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo")


def package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(SKIP_SUFFIXES) or name.startswith("."):
                continue
            p = Path(dirpath) / name
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


@lru_cache(maxsize=None)
def _package_hash(package: str) -> str:
    d = package_dir(package)
    return _tree_hash(d) if d is not None else "absent"


def _llama_cpp_version() -> str:
    try:
        from cardforge.core import llama_cpp

        return str(llama_cpp.VERSION)
    except Exception:  # noqa: BLE001 - a core without llama.cpp support still versions its Python code
        return "unknown"


def code_version(packages: tuple[str, ...]) -> str:
    """16 hex digits over the packages' source files (sorted by package) and the llama.cpp release."""
    h = hashlib.sha256()
    for pkg in sorted(set(packages)):
        h.update(f"{pkg}={_package_hash(pkg)}\n".encode())
    h.update(f"llama.cpp={_llama_cpp_version()}\n".encode())
    return h.hexdigest()[:16]


def clear_cache() -> None:
    """Forget the package hashes of this process (tests that edit a package's files)."""
    _package_hash.cache_clear()


# --- outputs ---


def _paths_in(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [p for v in obj.values() for p in _paths_in(v)]
    if isinstance(obj, (list, tuple)):
        return [p for v in obj for p in _paths_in(v)]
    return []


def output_files(result: Any, outputs: Path) -> list[Path]:
    """Files under `outputs` that the stage's (JSON-able) result names, directly or as a folder's contents."""
    root = outputs.resolve()
    found: set[Path] = set()
    for s in _paths_in(result):
        if not s or len(s) > 4096 or "\n" in s or "/" not in s:
            continue
        try:
            p = Path(s).resolve()
        except (OSError, RuntimeError):
            continue
        if p == root or not p.is_relative_to(root) or p.parts[len(root.parts)] == ".pipeline":
            continue
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    return sorted(found)


def hash_outputs(result: Any, outputs: Path, known: dict[str, dict] | None = None) -> dict[str, dict]:
    """{path relative to outputs: {sha256, size, mtime_ns}}; a file whose size and mtime match `known` keeps
    its recorded hash (it has not been written since)."""
    root = outputs.resolve()
    out: dict[str, dict] = {}
    for f in output_files(result, outputs):
        rel = f.relative_to(root).as_posix()
        st = f.stat()
        old = (known or {}).get(rel)
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            out[rel] = old
        else:
            out[rel] = {"sha256": sha256_file(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def outputs_digest(files: dict[str, dict]) -> str:
    """One hash over every output file's path and content (the MLflow tag `cardforge.outputs_sha256`)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return h.hexdigest()[:16]


def changed_outputs(recorded: dict[str, dict], outputs: Path) -> list[str]:
    """What no longer matches the record: 'missing PATH' or 'changed PATH' (content, not just mtime)."""
    root = outputs.resolve()
    problems = []
    for rel, info in sorted(recorded.items()):
        f = root / rel
        if not f.is_file():
            problems.append(f"missing {rel}")
            continue
        st = f.stat()
        if st.st_size == info.get("size") and st.st_mtime_ns == info.get("mtime_ns"):
            continue
        if st.st_size != info.get("size") or sha256_file(f) != info.get("sha256"):
            problems.append(f"changed {rel}")
    return problems
