"""The MTP stage on the tiny model: continuations from llama-server, head retrained with the trunk frozen, a new
checkpoint whose other files are the merged ones (hard links), manifests, MLflow, resume, and quant picking it up.
The slow test also runs the online bench: llama-server draft-mtp with the grafted vs the retrained head."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from cardforge.core.models import mtp as mtp_io

SMALL = ["mtp.sources=[builtin]", "mtp.num_prompts=6", "mtp.heldout_fraction=0.34", "mtp.max_new_tokens=8",
         "mtp.steps=40", "mtp.positions_per_step=8", "mtp.bench=false"]


@pytest.fixture()
def merged_outputs(tiny_model_dir, tmp_path):
    """<outputs>/merge/model = the tiny base (its head is the 'grafted' one)."""
    out = tmp_path / "artifacts"
    shutil.copytree(tiny_model_dir, out / "merge" / "model")
    return out


def _cfg(out, experiment, *extra):
    from cardforge.core.config.compose import compose

    return compose("mtp", ["experiment=tiny", f"paths.outputs={out}", f"logger.experiment_name={experiment}",
                           *SMALL, *extra])


def test_mtp_stage_retrains_only_the_head_and_writes_a_linked_checkpoint(merged_outputs, mlflow_uri,
                                                                          mlflow_experiment):
    import mlflow

    from cardforge.quant.stage import source_dir
    from cardforge.train.mtp import stage

    cfg = _cfg(merged_outputs, mlflow_experiment)
    res = stage.run(cfg)
    src, dst = merged_outputs / "merge" / "model", merged_outputs / "mtp" / "model"
    assert res.model_dir == str(dst) and res.n_train >= 1 and res.n_heldout >= 1
    # the head changed, everything else is the merged checkpoint itself (same inode)
    old, new = mtp_io.read_mtp_tensors(src), mtp_io.read_mtp_tensors(dst)
    assert set(old) == set(new) and len(new) == 15
    assert sum(not torch.equal(old[k], new[k]) for k in old) >= 12
    assert os.stat(dst / "model.safetensors").st_ino == os.stat(src / "model.safetensors").st_ino
    assert mtp_io.mtp_manifest(src)["shard_sha256"] != mtp_io.mtp_manifest(dst)["shard_sha256"]
    grafted = json.loads((dst / "mtp_manifest.grafted.json").read_text())
    assert grafted == mtp_io.mtp_manifest(src)
    assert json.loads((dst / "mtp_manifest.retrained.json").read_text()) == mtp_io.mtp_manifest(dst)
    # offline numbers before/after, losses, MLflow
    assert res.offline_before["accept_rate"] == 0.0  # the random grafted head
    assert len(res.losses) == 40 and all(l == l for l in res.losses)
    run = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")[0]
    assert run.data.tags["cardforge.stage"] == "mtp"
    assert "mtp.offline.retrained.accept_rate" in run.data.metrics
    assert run.data.tags["mtp.head_sha256"] == mtp_io.mtp_manifest(dst)["shard_sha256"]
    # quant now quantizes the retrained checkpoint
    assert source_dir(cfg) == dst
    # resume: asked again, every continuation comes from the file (no GGUF, no server: gguf_dir is not touched)
    path = merged_outputs / "mtp" / "continuations.jsonl"
    lines = path.read_text()
    assert len(lines.splitlines()) == 6
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    again = stage.continuations(cfg, src, tok, stage.prompts(cfg, tok), path, merged_outputs / "nowhere",
                                merged_outputs / "nowhere")
    assert len(again) == 6 and path.read_text() == lines and not (merged_outputs / "nowhere").exists()


def test_mtp_stage_needs_a_merged_model(tmp_path):
    from cardforge.core.errors import UserError
    from cardforge.train.mtp import stage

    with pytest.raises(UserError, match="make merge"):
        stage.run(_cfg(tmp_path, "x"))


def test_quant_without_the_retrained_checkpoint_says_run_mtp(merged_outputs):
    from cardforge.core.errors import UserError
    from cardforge.quant.stage import source_dir

    with pytest.raises(UserError, match="make mtp"):
        source_dir(_cfg(merged_outputs, "x"))
    assert source_dir(_cfg(merged_outputs, "x", "mtp.enabled=false")) == merged_outputs / "merge" / "model"


@pytest.mark.slow
def test_online_accept_grafted_vs_retrained(merged_outputs, mlflow_uri, mlflow_experiment):
    from cardforge.train.mtp import stage

    cfg = _cfg(merged_outputs, mlflow_experiment, "mtp.bench=true", "mtp.bench_n_max=[0,2]", "mtp.bench_repeats=1",
               "mtp.bench_max_tokens=32", "mtp.sources=[builtin,humaneval]", "mtp.num_prompts=24",
               "mtp.max_new_tokens=32", "mtp.steps=200", "mtp.positions_per_step=32")
    res = stage.run(cfg)
    rows = {(r["head"], r["prompt_type"], r["n_max"]): r for r in res.bench}
    # On the random *base* model (this fixture) the head learns its training prompts' continuations (offline
    # accept 0.63 there, seen) but barely generalizes to unseen prompts (held-out 0.12, the bench's own prompts
    # ~0.01, seen 2026-11-29): a random 4-layer trunk's next-token function is not learnable from 24 short
    # continuations. The distilled tiny model of `make reproduce` answers every prompt alike, and there the
    # retrained head is accepted online (0.778 at n-max 3). Asserted here: the plumbing end to end and no loss.
    assert res.offline_train_after["accept_rate"] > res.offline_before["accept_rate"] + 0.3
    for ptype in ("coding", "reasoning"):
        for head in ("grafted", "retrained"):
            assert rows[(head, ptype, 0)]["tok_s_median"] and rows[(head, ptype, 2)]["draft_n"] > 0
        assert rows[("grafted", ptype, 2)]["accept_rate"] < 0.1
        assert rows[("retrained", ptype, 2)]["accept_rate"] >= rows[("grafted", ptype, 2)]["accept_rate"]
    assert (merged_outputs / "mtp" / "mtp_bench.md").is_file()
