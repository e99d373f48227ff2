"""Release bundle helpers without MLflow or models: which GGUF tiers ship, why a repository is skipped, the
printed upload commands, hard link -> copy fallback, the sha256 cache, the config section."""

from __future__ import annotations

import errno
import os
import shlex

import pytest

from cardforge.card import release
from cardforge.card.collect import StageRun
from cardforge.core.config.compose import ConfigError, compose


def _quant(params: dict[str, str]) -> StageRun:
    return StageRun(stage="quant", run_id="q" * 32, name="quant", status="FINISHED", start_time=0, params=params,
                    metrics={}, tags={})


def test_shipped_tiers_are_the_quant_runs_configured_tiers_not_its_by_products():
    cfg = compose("release")
    q = _quant({"quant.gguf_tiers.0.tier": "Q4_K_M", "quant.gguf_tiers.0.imatrix": "True",
                "quant.gguf_tiers.1.tier": "Q8_0", "quant.gguf_tiers.1.imatrix": "False",
                "quant.compare_no_imatrix": "True"})
    assert release.shipped_tiers(cfg, q) == ["Q4_K_M-imatrix", "Q8_0"]
    cfg = compose("release", ["release.gguf_tiers=[BF16,Q8_0]"])  # an explicit list wins
    assert release.shipped_tiers(cfg, q) == ["BF16", "Q8_0"]


@pytest.mark.parametrize("params, fmt, why", [
    ({"format": "gguf", "quant.fp8": "True"}, "fp8", "format=gguf"),
    ({"format": "None", "quant.fp8": "False"}, "fp8", "quant.fp8=false"),
    ({"format": "None", "quant.nvfp4": "[]"}, "nvfp4", "quant.nvfp4=[]"),
    ({"format": "fp8", "quant.fp8": "True"}, "gguf", "format=fp8"),
])
def test_skip_reason_names_the_setting(params, fmt, why):
    assert release._why_not(_quant(params), fmt) == why


def _plan(repos: list[release.Repo]) -> release.Plan:
    parent = StageRun(stage="pipeline", run_id="abcdef12" + "0" * 24, name="p", status="FINISHED", start_time=0,
                      params={}, metrics={}, tags={})
    return release.Plan(parent=parent, runs={}, repos=repos, skipped={}, expected_mtp={"tensors": {}},
                        license="apache-2.0", attribution=[])


def test_upload_commands_quote_paths_and_say_which_key_is_missing(tmp_path):
    out = tmp_path / "my release"
    plan = _plan([release.Repo("main", "M-Distill", "acme/M-Distill", "acme-ms/M-Distill"),
                  release.Repo("fp8", "M-Distill-FP8", None, None)])
    lines = release.upload_commands(plan, out, "huggingface-cli")
    assert shlex.split(lines[0]) == ["huggingface-cli", "upload", "acme/M-Distill", str(out / "main"), ".",
                                     "--repo-type", "model", "--commit-message",
                                     "M-Distill: cardforge release of pipeline run abcdef12"]
    assert shlex.split(lines[1])[:5] == ["modelscope", "upload", "acme-ms/M-Distill", str(out / "main"),
                                         "--repo-type"]
    assert lines[2].startswith("# fp8: no Hugging Face repo id; set release.repos.fp8.hf=OWNER/NAME")
    assert lines[3].startswith("# fp8: no ModelScope repo id; set release.repos.fp8.modelscope=OWNER/NAME")


def test_repo_ids_from_namespace_unless_given():
    cfg = compose("release", ["release.hf_namespace=acme", "release.repos.fp8.hf=other/Fp8",
                              "release.modelscope_namespace=ms"])
    assert release._repo_ids(cfg, "main", "T-Distill") == ("acme/T-Distill", "ms/T-Distill")
    assert release._repo_ids(cfg, "fp8", "T-Distill-FP8") == ("other/Fp8", "ms/T-Distill-FP8")
    cfg = compose("release", ["card.hf_repo=me/Card"])  # the main repo defaults to the card's repo ids
    assert release._repo_ids(cfg, "main", "x") == ("me/Card", None)


def test_place_links_and_falls_back_to_copy_across_filesystems(tmp_path, monkeypatch):
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights")
    item = release.Item("w.bin", "quant", "r", source=src)
    assert release.place(item, tmp_path / "a" / "w.bin", "hardlink") == "hardlink"
    assert os.stat(tmp_path / "a" / "w.bin").st_ino == src.stat().st_ino

    def exdev(*_a, **_k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(release.os, "link", exdev)
    assert release.place(item, tmp_path / "b" / "w.bin", "hardlink") == "copy"
    assert (tmp_path / "b" / "w.bin").read_bytes() == b"weights"
    assert os.stat(tmp_path / "b" / "w.bin").st_ino != src.stat().st_ino
    assert release.place(item, tmp_path / "c" / "w.bin", "copy") == "copy"
    written = release.Item("README.md", "release", None, data=b"# hi\n")
    assert release.place(written, tmp_path / "d" / "README.md", "hardlink") == "written"


def test_place_does_not_hide_other_link_errors(tmp_path, monkeypatch):
    src = tmp_path / "w.bin"
    src.write_bytes(b"x")

    def denied(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(release.os, "link", denied)
    with pytest.raises(OSError, match="No space"):
        release.place(release.Item("w.bin", "quant", "r", source=src), tmp_path / "o" / "w.bin", "hardlink")


def test_hash_cache_is_keyed_by_inode_so_a_hard_link_is_not_hashed_twice(tmp_path, monkeypatch):
    from cardforge.core.io import sha256_file

    a = tmp_path / "a.bin"
    a.write_bytes(b"abc" * 1000)
    cache: dict[str, str] = {}
    got = release.hash_files([a], cache)
    assert got[a] == sha256_file(a)
    os.link(a, tmp_path / "b.bin")
    calls = []
    monkeypatch.setattr(release, "sha256_file", lambda p: calls.append(p) or "x")
    assert release.hash_files([tmp_path / "b.bin"], cache)[tmp_path / "b.bin"] == sha256_file(a)
    assert calls == []
    a.write_bytes(b"changed")  # new size and mtime: hashed again
    assert release.hash_files([a], cache)[a] == "x" and calls == [a]


def test_release_config_section_is_typed():
    cfg = compose("release", ["experiment=qwen36_27b_card"])
    assert cfg.stage.value == "release" and cfg.release.name == "Qwen3.6-27B-DSV4Pro-Thinking-Distill"
    assert cfg.release.out_dir is None and cfg.paths.outputs.endswith("artifacts/qwen36_27b_card")  # -> <outputs>/release
    for bad, msg in [("release.link=symlink", "release.link: Invalid value 'symlink'"),
                     ("release.repos.fp8.hf=noslash", "release.repos.fp8.hf must be OWNER/NAME"),
                     ("release.repos.gguf.hf=a/b", "release.repos.gguf: no such key"),
                     ("release.hf_cli=git", "release.hf_cli must be hf or huggingface-cli")]:
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.").replace("(", r"\(")):
            compose("release", [bad])


def test_manifest_markdown_lists_every_file():
    man = {"parent_run_id": "p" * 32, "release_run_id": "r" * 32, "license": "apache-2.0",
           "skipped": {"fp8": "quant run qqqqqqqq produced no FP8-block128 (format=gguf)"},
           "repos": {"main": {"name": "T", "GB": 0.1, "GiB": 0.09, "hf": "a/T", "modelscope": None,
                              "not_produced": ["gguf/ Q5_K_M-imatrix: not produced by quant run qqqqqqqq"],
                              "files": [{"path": "gguf/T-MTP-Q8_0.gguf", "GB": 0.1, "GiB": 0.09, "sha256": "f" * 64,
                                         "stage": "quant", "run_id": "q" * 32}]}}}
    text = release.manifest_md(man)
    assert f"| `gguf/T-MTP-Q8_0.gguf` | 0.1 | 0.09 | `{'f' * 64}` | quant | `{'q' * 32}` |" in text
    assert "- not produced: gguf/ Q5_K_M-imatrix" in text and "- fp8: skipped, quant run" in text


def test_an_unreadable_weight_file_fails_the_lineage_check(tmp_path):
    from cardforge.quant.lineage import MtpLineageError

    bad = tmp_path / "x-MTP-Q8_0.gguf"
    bad.write_bytes(b"not a gguf")
    repo = release.Repo("main", "M", None, None, checks=[("gguf", "gguf/x-MTP-Q8_0.gguf")])
    plan = _plan([repo])
    plan.expected_mtp = {"tensors": {"mtp.fc.weight": {}}}
    with pytest.raises(MtpLineageError, match=r"^MTP lineage check failed for main/gguf/x-MTP-Q8_0\.gguf \(gguf\), "
                                              r"release stopped: cannot read .*x-MTP-Q8_0\.gguf"):
        release.check_lineage(plan, lambda r, d: bad)
