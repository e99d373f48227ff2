"""The eval stage end to end on real llama-server: GGUFs from config keys, distill vs base, the MTP bench
(spec off vs draft-mtp n-max, timings from the stream), summary + table + plot + records in MLflow."""

from __future__ import annotations

import json
import re

import mlflow
import pytest

from cardforge.core.config.compose import compose
from cardforge.core.io import sha256_file
from cardforge.core.models.smollm2 import gguf_path
from cardforge.eval.records import read_records
from cardforge.eval.stage import run


@pytest.mark.slow  # two servers + four bench servers on a shared 2-core CPU: a few minutes
def test_stage_tiny_vs_smollm2_with_mtp_bench(tmp_path, tiny_gguf, mlflow_uri, mlflow_experiment, capfd):
    cfg = compose("eval", [
        "experiment=tiny", f"eval.distill_model={tiny_gguf}", f"eval.base_model={gguf_path()}",
        "eval.limit=3", "eval.max_tokens=48", "eval.mmlu_shots=1", "eval.mtp_n_max=[2,3]",
        "eval.bench_repeats=2", "eval.bench_max_tokens=32", "eval.progress=false",
        f"paths.outputs={tmp_path}", f"logger.experiment_name={mlflow_experiment}"])
    res = run(cfg)
    for label in ("distill", "base"):
        for suite in ("gpqa_diamond", "mmlu"):
            recs = read_records(tmp_path / "eval" / label / f"{suite}.jsonl")
            assert len(recs) == 3 and all(r["finish_reason"] in ("stop", "length") for r in recs)
            assert all(r["completion_tokens"] and r["ttft_s"] is not None for r in recs)
            assert {r["model_id"] for r in recs} == {"gguf-sha256:" + sha256_file(tiny_gguf if label == "distill"
                                                                                  else gguf_path())}
    gq = res.summary["suites"]["gpqa_diamond"]
    assert gq["delta"]["n"] == 3 and "smoke set" in gq["note"]
    cut = sum(r["finish_reason"] == "length" for r in res.records["distill"]["gpqa_diamond"])
    assert (f"distill: {cut} of 3 answers truncated" in gq["note"]) == (cut > 0)  # the smoke note says so
    rows = {(r["tier"], r["prompt_type"], r["n_max"]): r for r in res.bench}
    tier = tiny_gguf.stem
    assert {k[2] for k in rows} == {0, 2, 3}
    off, n3 = rows[(tier, "coding", 0)], rows[(tier, "coding", 3)]
    assert off["draft_n"] == 0 and off["speedup"] == pytest.approx(1.0)
    assert n3["draft_n"] > 0 and 0 <= n3["accept_rate"] <= 1 and n3["speedup"] > 0
    assert (tmp_path / "eval" / "mtp_bench.png").read_bytes()[:4] == b"\x89PNG"
    run_ = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")[0]
    assert f"mtp.{tier}.coding.n3.accept_rate" in run_.data.metrics
    assert "delta.gpqa_diamond.mcnemar_p" in run_.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_.info.run_id, "eval")}
    assert {"eval/summary.json", "eval/eval_table.md", "eval/mtp_bench.png", "eval/records"} <= arts
    # the bench is never silent (issue 25 item 7): a first line saying what comes, then requests against the total
    bars = [ln for ln in capfd.readouterr().err.splitlines() if re.match(r"\[mtp bench\] \d+/\d+ requests", ln)]
    total = int(re.match(r"\[mtp bench\] 0/(\d+) requests \(0%\) ", bars[0]).group(1))
    assert re.search(r": \d+ model\(s\) x n_max \[0, 2, 3\], one llama-server each$", bars[0]), bars[0]
    assert bars[-1].startswith(f"[mtp bench] {total}/{total} requests (100%) ")
    assert any(", ETA " in ln for ln in bars[1:-1]) or len(bars) == 2, bars
    print(json.dumps(res.bench, indent=1))
