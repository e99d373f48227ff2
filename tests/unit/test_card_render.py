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
