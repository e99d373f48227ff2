"""GPQA / MMLU loaders on the self-written fixtures: schema, seeded shuffles and subsets, prompts."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from cardforge.eval.benchmarks import get, gpqa, mmlu

FIX = "tests/fixtures/eval"


def _ev(**kw):
    base = dict(seed=1234, limit=None, gpqa_source=f"{FIX}/gpqa_diamond_tiny.csv", mmlu_source=f"{FIX}/mmlu",
                mmlu_subset=500, mmlu_shots=5)
    return SimpleNamespace(**{**base, **kw})


def test_gpqa_shuffle_is_seeded_and_gold_is_the_correct_answer(repo_root):
    qs = gpqa.load(_ev(), repo_root)
    assert len(qs) == 10 and qs[0].id == "fx000"
    rows = {gpqa.question_id(r): r for r in gpqa.rows(f"{FIX}/gpqa_diamond_tiny.csv", repo_root)}
    for q in qs:
        assert q.meta["choices"]["ABCD".index(q.gold)] == rows[q.id]["Correct Answer"].strip()
        assert f"{q.gold}) {rows[q.id]['Correct Answer'].strip()}" in q.messages[0]["content"]
    assert [q.gold for q in gpqa.load(_ev(), repo_root)] == [q.gold for q in qs]  # same seed, same order
    other = [q.gold for q in gpqa.load(_ev(seed=7), repo_root)]
    assert other != [q.gold for q in qs]
    assert len(Counter(q.gold for q in qs)) >= 3  # not always the first slot
    assert len(gpqa.load(_ev(limit=3), repo_root)) == 3


def test_gpqa_missing_columns_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Correct Answer\nq,a\n")
    with pytest.raises(ValueError, match="Incorrect Answer 1"):
        gpqa.rows(str(bad))


def test_mmlu_five_shot_same_subject_seeded_subset(repo_root):
    qs = mmlu.load(_ev(mmlu_subset=6), repo_root)
    assert len(qs) == 6 and all(q.meta["shots"] == 5 for q in qs)
    assert [q.id for q in qs] == [q.id for q in mmlu.load(_ev(mmlu_subset=6), repo_root)]
    assert [q.id for q in qs] != [q.id for q in mmlu.load(_ev(mmlu_subset=6, seed=99), repo_root)]
    text = qs[0].messages[0]["content"]
    assert text.count("Answer: ") == 5 + 1  # five worked shots + the instruction's format line
    assert text.rstrip().endswith("D) " + text.rstrip().split("D) ")[-1])  # ends at the question, no answer
    geo = next(q for q in qs if q.meta["subject"] == "geography")
    assert "capital of France" in geo.messages[0]["content"] and "What is 2 + 3" not in geo.messages[0]["content"]


def test_registry_names_unknown_suites():
    assert get("mmlu") is mmlu
    with pytest.raises(KeyError, match="eval.suites"):
        get("nope")
