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
])
def test_parse_letter_never_guesses(text, want):
    assert parse_letter(text) == want
