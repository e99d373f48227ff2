"""Card pieces without MLflow: metric names parsed as the stages write them, row matching, limitations text."""

from __future__ import annotations

import pytest

from cardforge.card import collect, render
from cardforge.card.collect import Collected, StageRun
from cardforge.core.config.compose import ConfigError, compose


def _run(stage: str, metrics=None, params=None, run_id: str = "0123456789abcdef") -> StageRun:
    return StageRun(stage=stage, run_id=run_id, name=stage, status="FINISHED", start_time=0,
                    params=params or {}, metrics=metrics or {}, tags={})


def _ctx(card_run: StageRun) -> render.Context:
    return render.Context(title="T", experiment="tiny", card_run=card_run, attribution=[], languages=["en", "zh"])


def test_metric_names_parse_like_the_stages_write_them():
    ev = _run("eval", {"distill.gpqa_diamond.accuracy": 0.5, "base.gpqa_diamond.accuracy": 0.25,
                       "delta.gpqa_diamond.delta": 0.25, "distill.lm_eval.gsm8k.exact_match": 0.1,
                       # a tier named after a dotted model name: Qwen3.6-...
                       "mtp.Qwen3.6-27B-MTP-Q4_K_M-imatrix.coding.n3.accept_rate": 0.72,
                       "mtp.Qwen3.6-27B-MTP-Q4_K_M-imatrix.coding.n0.tok_s_median": 10.4})
    assert collect.suite_stats(ev) == {"gpqa_diamond": {"distill": {"accuracy": 0.5}, "base": {"accuracy": 0.25},
                                                        "delta": {"delta": 0.25}}}
    rows = collect.mtp_rows(ev)
    assert [(r["tier"], r["n_max"]) for r in rows] == [("Qwen3.6-27B-MTP-Q4_K_M-imatrix", 0),
                                                        ("Qwen3.6-27B-MTP-Q4_K_M-imatrix", 3)]
    q = _run("quant", {"Q4_K_M-imatrix.GB": 16.8, "base:Q4_K_M-imatrix.GiB": 15.6, "quant.gguf.seconds": 3.0,
                       "NVFP4-W4A16.GB": 29.0})
    assert collect.quant_files(q) == {"Q4_K_M-imatrix": {"GB": 16.8}, "base:Q4_K_M-imatrix": {"GiB": 15.6},
                                      "NVFP4-W4A16": {"GB": 29.0}}


def test_bench_row_matches_its_own_quant_file_only():
    rows = [{"tier": "m-MTP-Q4_K_M-imatrix", "prompt_type": "reasoning", "n_max": 3},
            {"tier": "m-MTP-Q4_K_M-imatrix", "prompt_type": "coding", "n_max": 3},
            {"tier": "m-MTP-Q8_0", "prompt_type": "coding", "n_max": 3}]
    assert render._bench_for("Q4_K_M-imatrix", None, rows, 3) == rows[1]  # coding preferred
    assert render._bench_for("Q4_K_M", "/x/m-MTP-Q4_K_M.gguf", rows, 3) is None  # no imatrix: not benched
    assert render._bench_for("Q8_0", None, rows, 2) is None


@pytest.mark.parametrize("mode, judge, expect, absent", [
    ("simulate", "False", "simulated, not executed", "real execution"),
    ("execute", "True", "a judge kept only trajectories", "simulated, not executed"),
    ("execute", "False", "real execution in a sandbox", "a judge kept"),
])
def test_limitations_follow_the_data_configuration(mode, judge, expect, absent):
    data = _run("data", params={"data.tool_results": mode, "data.judge": judge, "model.embedded": "False"})
    c = Collected(parent=_run("pipeline"), stages={"data": data})
    text = "\n".join(render.limitations(c, _ctx(_run("card")), "en"))
    assert expect in text and absent not in text
    zh = "\n".join(render.limitations(c, _ctx(_run("card")), "zh"))
    assert ("模拟的" in zh) == (mode == "simulate")


def test_a_stage_without_a_run_is_not_measured_in_both_languages():
    c = Collected(parent=_run("pipeline", run_id="feedbeef00000000"), stages={})
    ctx = _ctx(_run("card"))
    for section in (render.training, render.evaluation, render.mtp, render.quant, render.protocol):
        en, zh = "\n".join(section(c, ctx, "en")), "\n".join(section(c, ctx, "zh"))
        assert "**Not measured in this run**" in en and "`feedbeef`" in en
        assert "**本次运行未测量**" in zh
        assert "[run" not in en


def test_p_values_keep_their_precision():
    assert render.p_value(0.6875) == "0.6875"
    assert render.p_value(3.2e-06) == "3.2e-06"


def test_card_languages_are_checked_at_composition():
    with pytest.raises(ConfigError, match="card.languages"):
        compose("card", ["card.languages=[en,fr]"])
    cfg = compose("card", ["experiment=qwen36_27b_card"])
    assert cfg.card.title == "Qwen3.6-27B-DSV4Pro-Thinking-Distill"
    assert [a.name for a in cfg.card.attribution][:2] == ["ReAct", "STaR"]


# --- the ledger and the exact audit, on synthetic runs (hypothesis picks the recorded values) ---

from types import SimpleNamespace  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cardforge.card import audit  # noqa: E402


def _store(*runs: StageRun):
    """A stand-in for MlflowClient.get_run over StageRuns (test double: the card stage uses the real client)."""
    by_id = {r.run_id: SimpleNamespace(info=SimpleNamespace(run_id=r.run_id),
                                       data=SimpleNamespace(metrics=dict(r.metrics), params=dict(r.params),
                                                            tags=dict(r.tags))) for r in runs}
    return SimpleNamespace(get_run=lambda rid: by_id[rid])


FRACTION = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
POSITIVE = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


def _synthetic(acc, ci, n, ppl, gb, tok, speed, loss, extra=None):
    tier = "m-MTP-Q4_K_M-imatrix"
    ev = _run("eval", run_id="e" * 32, metrics={
        "distill.mmlu.accuracy": acc, "distill.mmlu.ci95_low": ci[0], "distill.mmlu.ci95_high": ci[1],
        "distill.mmlu.correct": float(n // 2), "distill.mmlu.n": float(n), "distill.mmlu.finish_stop": float(n),
        "base.mmlu.accuracy": 1 - acc, "delta.mmlu.delta": 2 * acc - 1, "delta.mmlu.ci95_low": -ci[0],
        "delta.mmlu.ci95_high": ci[1], "delta.mmlu.n": float(n), "delta.mmlu.mcnemar_p": ci[0],
        f"mtp.{tier}.coding.n0.tok_s_median": tok, f"mtp.{tier}.coding.n0.speedup": 1.0,
        f"mtp.{tier}.coding.n3.tok_s_median": tok * speed, f"mtp.{tier}.coding.n3.speedup": speed,
        f"mtp.{tier}.coding.n3.accept_rate": acc, **(extra or {})},
        params={"serve.mtp.n_max": "3", "eval.temperature": "0.6", "eval.max_tokens": str(n * 7),
                "eval.thinking": "True", "eval.compare_base": "True", "model.embedded": "True"})
    ev.tags = {"eval.distill.format": "Q4_K_M-imatrix", "eval.base.format": "BF16",
               "eval.mmlu.note": f"smoke set ({n} questions): {n} of {n} answers truncated"}
    q = _run("quant", run_id="b" * 32, metrics={"Q4_K_M-imatrix.GB": gb, "Q4_K_M-imatrix.GiB": gb / 1.0737,
                                                "Q4_K_M-imatrix.ppl": ppl, "Q4_K_M-imatrix.kld_mean": ci[0]},
             params={"model.name": "m", "model.embedded": "True"})
    t = _run("train", run_id="a" * 32, metrics={"train/final_loss": loss},
             params={"lora.r": str(n), "trainer.max_steps": str(n + 1), "model.name": "m"})
    c = Collected(parent=_run("pipeline", run_id="d" * 32), stages={"train": t, "quant": q, "eval": ev})
    card = _run("card", run_id="c" * 32, params={"eval.temperature": "0.6", "eval.thinking": "True"})
    ctx = render.Context(title="T", experiment="tiny", card_run=card, attribution=[], languages=["en", "zh"])
    text, values = render.render_with_values(c, ctx)
    return text, values, _store(t, q, ev, card)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(acc=FRACTION, ci=st.tuples(FRACTION, FRACTION), n=st.integers(1, 100000), ppl=POSITIVE, gb=POSITIVE,
       tok=POSITIVE, speed=st.floats(0.01, 10), loss=POSITIVE, pick=st.integers(0, 10**6))
def test_audit_passes_the_rendered_card_and_fails_any_changed_number(acc, ci, n, ppl, gb, tok, speed, loss, pick):
    text, values, store = _synthetic(acc, ci, n, ppl, gb, tok, speed, loss)
    assert audit.audit(text, values, store) > 20
    nums = audit.numbers(text)
    line, start, end, tok_ = nums[pick % len(nums)]
    lines = text.split("\n")
    digits = [i for i in range(start, end) if lines[line][i].isdigit()]
    i = digits[-1]
    lines[line] = lines[line][:i] + str((int(lines[line][i]) + 1) % 10) + lines[line][i + 1:]
    with pytest.raises(audit.AuditError):
        audit.audit("\n".join(lines), values, store)


def test_missing_records_render_not_measured_and_the_audit_checks_the_absence():
    text, values, store = _synthetic(0.5, (0.1, 0.9), 8, 300.0, 0.1, 20.0, 0.6, 1.5)
    assert "final 1.5000" in text and "tokens/s" in text
    absent = [v for v in values if v["key"] == "train/tokens_per_s_mean"]
    assert absent and all(v["text"] in ("not measured", "未测量") for v in absent)  # never a default
    # the run recorded it after all: the card's "not measured" is now false, and the audit says so
    store.get_run("a" * 32).data.metrics["train/tokens_per_s_mean"] = 12.0
    with pytest.raises(audit.AuditError, match="tokens_per_s_mean"):
        audit.audit(text, values, store)


def test_the_card_says_what_the_eval_recorded_not_fixed_prose():
    text, values, store = _synthetic(0.0, (0.0, 0.3), 8, 266000.0, 0.1, 20.0, 0.62, 1.5)
    # formats differ: no "same format" claim, a warning naming both
    assert "different formats (distill `Q4_K_M-imatrix`, base `BF16`" in text
    assert "same GGUF tier" not in text and "same quantization" not in text
    # the suite's own note, numbers and all, carried into the card with its run
    assert "smoke set (8 questions): 8 of 8 answers truncated [run eeeeeeee]" in text
    # a speedup below one and a huge PPL on an embedded model come with their explanation
    assert "A speedup below one" in text and "Reading PPL on an embedded stand-in" in text
    # no local path: the model is named, never its path
    assert "model.path" not in text and "/home/" not in text and ".cache" not in text
    # the serve.mtp.n_max the MTP columns were measured at is the one that was benched
    assert "n-max = 3, the served `serve.mtp.n_max`" in text
    audit.audit(text, values, store)


def test_n_max_not_benched_is_said_not_relabelled():
    text, values, store = _synthetic(0.5, (0.1, 0.9), 8, 300.0, 0.1, 20.0, 1.5, 1.5)
    run = store.get_run("e" * 32)
    assert "n-max = 3, the served" in text
    c_params = {"serve.mtp.n_max": "4"}
    ev = _run("eval", run_id="e" * 32, metrics=dict(run.data.metrics), params={**run.data.params, **c_params})
    ev.tags = dict(run.data.tags)
    c = Collected(parent=_run("pipeline", run_id="d" * 32), stages={"eval": ev})
    ctx = render.Context(title="T", experiment="tiny", card_run=_run("card", run_id="c" * 32), attribution=[],
                         languages=["en"])
    q = render.quant(c, ctx, "en")
    assert q[2].startswith("> **Not measured")  # no quant run in this invocation
    c.stages["quant"] = _run("quant", run_id="b" * 32, metrics={"Q4_K_M-imatrix.GB": 1.0})
    lines = "\n".join(render.quant(c, ctx, "en"))
    assert "the largest n-max benched (the served `serve.mtp.n_max` = \x02" in lines  # marked value: 4
    assert "serve.mtp.n_max`) " not in lines


def test_eval_tiers_get_their_own_audited_rows():
    """eval.tiers (issue 19: the gate at BF16 and Q4_K_M-imatrix): metrics tier.<TIER>.* render as 'suite · TIER'
    rows next to the main tier's row (named by its served format), every number audited against the run."""
    tier = {"tier.BF16.distill.mmlu.accuracy": 0.71, "tier.BF16.distill.mmlu.ci95_low": 0.61,
            "tier.BF16.distill.mmlu.ci95_high": 0.79, "tier.BF16.distill.mmlu.correct": 71.0,
            "tier.BF16.distill.mmlu.n": 100.0, "tier.BF16.base.mmlu.accuracy": 0.02,
            "tier.BF16.delta.mmlu.delta": 0.69, "tier.BF16.delta.mmlu.ci95_low": 0.6,
            "tier.BF16.delta.mmlu.ci95_high": 0.78, "tier.BF16.delta.mmlu.n": 100.0,
            "tier.BF16.delta.mmlu.mcnemar_p": 3.1e-19}
    run = _run("eval", tier, run_id="e" * 32)
    assert collect.tier_suite_stats(run)["BF16"]["mmlu"]["delta"]["mcnemar_p"] == 3.1e-19
    assert collect.suite_stats(run) == {}  # tier metrics never leak into the main tier's rows
    text, values, store = _synthetic(0.5, (0.1, 0.9), 8, 300.0, 0.1, 20.0, 0.6, 1.5, extra=tier)
    rows = [line for line in text.splitlines() if line.startswith("| mmlu")]
    assert rows[0].startswith("| mmlu · Q4_K_M-imatrix |") and rows[1].startswith("| mmlu · BF16 | 71.0%")
    assert "+69.0 pp" in rows[1] and "3.1e-19" in rows[1]
    audit.audit(text, values, store)
