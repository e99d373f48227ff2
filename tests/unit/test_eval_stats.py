"""Statistics and answer parsing: exact values checked against hand/closed-form results."""

from __future__ import annotations

import math

import pytest

from cardforge.eval import stats
from cardforge.eval.benchmarks.letters import parse_letter


def test_wilson_known_values():
    lo, hi = stats.wilson(160, 198)  # the card's distill GPQA: 80.81%
    assert (round(lo, 4), round(hi, 4)) == (0.7476, 0.8569)  # closed form, z = 1.96
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert stats.wilson(10, 10)[1] == pytest.approx(1.0)


def test_mcnemar_exact_matches_binomial():
    assert stats.mcnemar_exact(0, 0) == 1.0
    # 1 vs 9 discordant: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11/1024
    assert stats.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(9, 1) == stats.mcnemar_exact(1, 9)
    assert stats.mcnemar_exact(5, 5) == 1.0


def test_paired_delta_and_bootstrap_ci():
    a = [{"id": str(i), "correct": i < 30} for i in range(40)]  # 30/40
    b = [{"id": str(i), "correct": i < 20} for i in range(40)]  # 20/40, nested: only_a = 10, only_b = 0
    d = stats.paired(a, b, iters=4000, seed=1)
    assert d["delta"] == pytest.approx(0.25) and (d["only_a"], d["only_b"]) == (10, 0)
    assert 0.1 <= d["ci95_low"] < 0.25 < d["ci95_high"] <= 0.41
    assert d["mcnemar_p"] == pytest.approx(2 / 1024)
    assert stats.paired(a, [], iters=10)["n"] == 0  # no overlap: nothing to pair


def test_summary_finish_table_and_median():
    recs = [{"id": "1", "correct": True, "parsed": "A", "finish_reason": "stop", "completion_tokens": 10},
            {"id": "2", "correct": False, "parsed": None, "finish_reason": "length", "completion_tokens": 99},
            {"id": "3", "correct": False, "parsed": None, "finish_reason": "error", "completion_tokens": None}]
    s = stats.summarize(recs)
    assert s["finish"] == {"stop": 1, "length": 1, "error": 0 + 1, "other": 0}
    assert s["parse_fail"] == 1 and s["median_completion_tokens"] == pytest.approx(54.5)
    assert s["accuracy"] == pytest.approx(1 / 3) and not math.isnan(s["ci95_low"])


@pytest.mark.parametrize("text,want", [
    ("The answer is (C).", "C"), ("Reasoning...\nAnswer: B", "B"), ("**Final answer: D**", "D"),
    ("B", "B"), ("(A)", "A"), ("Answer: A\nWait, actually Answer: C", "C"),
    ("", None), ("I think option (B) looks plausible but I am unsure", None), ("Answer: E", None),
    ("A good question.", None),
    # English words are never read as a letter (only the keyword is case-insensitive)
    ("I cannot answer a question like this.", None), ("a", None), ("As a model, I cannot say.", None),
    ("The answer is a matter of debate", None), ("Answer: a matter of taste", None), ("the answer is b", None),
    ("I cannot answer A or B without more data", None), ("answer is isotope-dependent", None),
    # the explicit forms: keyword in any case, a lowercase letter only where it cannot be the article
    ("ANSWER IS D", "D"), ("Answer: b", "B"), ("answer is (c).", "C"), ("Final Answer: **c**", "C"),
    ("The answer is: D", "D"), ("The answer is $\\boxed{B}$", "B"),
])
def test_parse_letter_never_guesses(text, want):
    assert parse_letter(text) == want


# --- the eval stage's config rules, the truncation label, the MTP bench per tier (fakes, no llama-server) ---

import contextlib  # noqa: E402
import json  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from cardforge.core.config.compose import compose  # noqa: E402
from cardforge.core.errors import UserError  # noqa: E402
from cardforge.eval import mtp_bench, stage  # noqa: E402
from cardforge.agent.client import Completion  # noqa: E402


def test_stream_false_is_refused_not_ignored():
    cfg = compose("eval", ["experiment=tiny", "eval.stream=false"])
    with pytest.raises(UserError, match="eval.stream=false is not supported"):
        stage.options(cfg)
    with pytest.raises(UserError, match="eval.stream=false"):
        stage.run(cfg)  # refused before any server starts or any MLflow run opens
    assert stage.options(compose("eval", ["experiment=tiny"]), "gguf-sha256:x").model_id == "gguf-sha256:x"


def test_truncation_note_says_when_accuracy_means_nothing():
    cut = [{"finish_reason": "length"}] * 8
    note = stage.truncation_note({"distill": cut, "base": cut}, 256)
    assert note.startswith("distill: 8 of 8 answers truncated; base: 8 of 8 answers truncated")
    assert "finish_reason=length at eval.max_tokens=256" in note and "accuracy is not meaningful" in note
    some = stage.truncation_note({"distill": cut[:2] + [{"finish_reason": "stop"}] * 6}, 256)
    assert some.startswith("distill: 2 of 8") and "count as wrong" in some and "not meaningful" not in some
    assert stage.truncation_note({"distill": [{"finish_reason": "stop"}]}, 256) is None
    per = {"distill": stats.summarize([{"id": "1", "correct": False, "parsed": None, "finish_reason": "length",
                                         "completion_tokens": 256}]), "note": "smoke set. " + note, "truncation": note}
    assert stage.table({"suites": {"gpqa_diamond": per}}).count("not meaningful") == 1  # printed once, no extra row


FILE_TYPE = {"BF16": 32, "Q4_K_M": 15, "Q8_0": 7}  # llama.cpp's LlamaFileType values


def _write_gguf_header(path, key: str) -> None:
    """A GGUF with no tensors whose header says its format, as llama-quantize writes it: general.file_type and,
    for an -imatrix tier, a quantize.imatrix.* key (the eval stage reads the format from the header)."""
    import struct

    tier = key.split(":")[-1]
    kv = [("general.file_type", 4, struct.pack("<I", FILE_TYPE[tier.removesuffix("-imatrix")]))]
    if tier.endswith("-imatrix"):
        name = b"imatrix.gguf"
        kv.append(("quantize.imatrix.file", 8, struct.pack("<Q", len(name)) + name))
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for k, typ, val in kv:
        out += struct.pack("<Q", len(k)) + k.encode() + struct.pack("<I", typ) + val
    path.write_bytes(out)


def _quant_outputs(tmp_path) -> dict:
    files = {}
    for key in ("BF16", "Q4_K_M", "Q4_K_M-imatrix", "Q8_0", "base:Q4_K_M-imatrix"):
        p = tmp_path / "quant" / "gguf" / f"tiny-{key.replace(':', '-')}.gguf"
        p.parent.mkdir(parents=True, exist_ok=True)
        _write_gguf_header(p, key)
        files[key] = {"path": str(p)}
    files["FP8-block128"] = {"path": str(tmp_path / "quant" / "fp8")}
    (tmp_path / "quant" / "quant_results.json").write_text(json.dumps({"files": files}))
    return files


def test_tiny_default_benches_two_quant_tiers_with_n_max_2_3_4(tmp_path):
    files = _quant_outputs(tmp_path)
    cfg = compose("eval", ["experiment=tiny", f"paths.outputs={tmp_path}"])
    assert {0, 2, 3, 4} <= set(cfg.eval.mtp_n_max)  # speculation off and n-max 2/3/4
    tl = stage.targets(cfg)
    assert tl[0].gguf == stage.Path(files["Q4_K_M-imatrix"]["path"])
    models = stage.bench_models(cfg, tl)
    assert models == {"Q4_K_M-imatrix": stage.Path(files["Q4_K_M-imatrix"]["path"]),
                      "Q8_0": stage.Path(files["Q8_0"]["path"])}
    # eval.distill_model names another file: the quant stage's tiers are not that model's, bench the file alone
    own = tmp_path / "own.gguf"
    _write_gguf_header(own, "Q4_K_M-imatrix")
    cfg2 = compose("eval", ["experiment=tiny", f"paths.outputs={tmp_path}", f"eval.distill_model={own}",
                            f"eval.base_model={own}"])
    assert stage.bench_models(cfg2, stage.targets(cfg2)) == {"own": own}
    cfg3 = compose("eval", ["experiment=tiny", f"paths.outputs={tmp_path}"])
    cfg3.eval.bench_models = {"x": "/nope.gguf"}  # a path, not "quant:": it must exist
    with pytest.raises(UserError, match="eval.bench_models.x"):
        stage.bench_models(cfg3, tl)


class _FakeLlama:
    """Stands in for llama-server + its /metrics: per request 10 verification steps, 15 drafted tokens (fewer
    than n-max per step, as with p-min > 0) of which 6 are accepted; tok/s grows with n-max."""

    def __init__(self, with_counters=True):
        self.with_counters, self.n, self.counters, self.started = with_counters, 0, None, []

    @contextlib.contextmanager
    def server(self, gguf, opts, **kw):
        self.n = opts["mtp"]["n_max"] if opts["mtp"]["enabled"] else 0
        self.counters = {"draft_steps": 0.0, "draft_tokens": 0.0, "draft_accepted": 0.0}
        self.started.append((gguf.name, self.n))
        yield SimpleNamespace(base_url="http://fake")

    async def complete(self, session, base_url, messages, sampling, **kw):
        spec = {"draft_n": 15, "draft_n_accepted": 6} if self.n else {}
        if self.n:
            self.counters = {"draft_steps": self.counters["draft_steps"] + 10,
                             "draft_tokens": self.counters["draft_tokens"] + 15,
                             "draft_accepted": self.counters["draft_accepted"] + 6}
        return Completion(content="x", finish_reason="length", latency_s=0.1,
                          timings={"predicted_n": 32, "predicted_per_second": 100.0 + self.n, **spec})

    async def spec_counters(self, session, base_url):
        return dict(self.counters) if self.with_counters else None


@pytest.mark.parametrize("with_counters", [True, False], ids=["server_steps", "no_counters"])
def test_bench_rows_per_tier_and_mean_accept_length(tmp_path, monkeypatch, mlflow_uri, mlflow_experiment,
                                                    with_counters):
    import mlflow

    from cardforge.serve.launchers import llama_cpp

    files = _quant_outputs(tmp_path)
    fake = _FakeLlama(with_counters)
    monkeypatch.setattr(llama_cpp, "llama_server", fake.server)
    monkeypatch.setattr(mtp_bench, "complete", fake.complete)
    monkeypatch.setattr(mtp_bench, "spec_counters", fake.spec_counters)
    cfg = compose("eval", ["experiment=tiny", f"paths.outputs={tmp_path}", "eval.bench_repeats=1",
                           "serve.mtp.p_min=0.5"])
    from cardforge.core.tracking import get_or_create_experiment

    # mlflow.set_experiment(name) would put the experiment's artifacts under the store's default root: the cwd's
    # ./mlruns as resolved when this process first opened the store (a chdir here comes too late)
    with mlflow.start_run(experiment_id=get_or_create_experiment(mlflow_experiment, mlflow_uri)) as run:
        rows = stage._bench(cfg, tmp_path / "eval", stage.targets(cfg))
    tiers = ["Q4_K_M-imatrix", "Q8_0"]
    assert sorted({r["tier"] for r in rows}) == tiers
    assert len(rows) == 2 * 4 * 2  # tiers x n-max {0,2,3,4} x prompt types
    assert fake.started == [(stage.Path(files[t]["path"]).name, n) for t in tiers for n in (0, 2, 3, 4)]
    by = {(r["tier"], r["prompt_type"], r["n_max"]): r for r in rows}
    off, n2, n4 = by[("Q8_0", "coding", 0)], by[("Q8_0", "coding", 2)], by[("Q8_0", "coding", 4)]
    assert off["mean_accept_len"] is None and off["speedup"] == pytest.approx(1.0)
    assert n2["accept_rate"] == pytest.approx(6 / 15) and n2["speedup"] == pytest.approx(102 / 100)
    md = (tmp_path / "eval" / "mtp_bench.md").read_text()
    assert all(f"| {t} | reasoning | 4 |" in md for t in tiers)  # one table row per tier, prompt type, n-max
    if with_counters:  # llama-server's own definition: 1 + accepted / verification steps = 1 + 12 / 20
        assert (n2["mean_accept_len"], n4["mean_accept_len"]) == (pytest.approx(1.6), pytest.approx(1.6))
        assert n2["mean_accept_len_source"] == "server" and n2["draft_steps"] == 20 and "1.60 |" in md
    else:  # the estimate 1 + n-max x rate (wrong for p-min > 0), marked as such
        assert (n2["mean_accept_len"], n4["mean_accept_len"]) == (pytest.approx(1.8), pytest.approx(2.6))
        assert n2["mean_accept_len_source"] == "estimate" and "1.80* |" in md
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert {f"mtp.{t}.coding.n4.mean_accept_len" for t in tiers} <= set(metrics)


def test_prometheus_counters_parse():
    text = ("# HELP llamacpp:spec_decode_num_drafts_total Speculative: Total speculative decoding verification steps\n"
            "# TYPE llamacpp:spec_decode_num_drafts_total counter\nllamacpp:spec_decode_num_drafts_total 42\n"
            "llamacpp:spec_decode_num_draft_tokens_total 120\nllamacpp:spec_decode_num_accepted_tokens_total 30\n"
            'llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 20\n')
    got = mtp_bench.parse_prometheus(text)
    assert got["llamacpp:spec_decode_num_drafts_total"] == 42 and len(got) == 3
