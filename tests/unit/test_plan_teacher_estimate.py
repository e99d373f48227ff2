"""`make plan`'s teacher line: the ceiling from the preset, replaced by the measured mean once a ledger exists."""

from __future__ import annotations

import pytest

from cardforge.core.chat.jsonl import append_record
from cardforge.core.config.compose import compose
from cardforge.pipeline.plan import TEACHER_PROMPT_TOKENS, _teacher_line, teacher_estimate


def cfg(tmp_path, *extra):
    return compose("pipeline", ["experiment=tiny", f"paths.outputs={tmp_path}", "data.num_samples=10",
                                "data.samples_per_task=2", "data.max_steps=3", "teacher.max_tokens=100",
                                "teacher.price.input_per_m=1.0", "teacher.price.output_per_m=4.0", *extra])


def test_ceiling_then_measured(tmp_path):
    e = teacher_estimate(cfg(tmp_path))
    per_in = 3 * TEACHER_PROMPT_TOKENS + (0 + 100 + 200)  # the context grows by each earlier answer
    assert e["samples"] == 20 and e["prompt_tokens"] == 20 * per_in and e["completion_tokens"] == 20 * 300
    assert e["cost"] == pytest.approx((20 * per_in * 1.0 + 20 * 300 * 4.0) / 1e6)
    assert e["how"].startswith("ceiling")
    data = tmp_path / "data"
    data.mkdir()
    (data / "trajectories.jsonl").write_text("{}\n{}\n")  # two samples done ...
    for _ in range(4):  # ... in four requests of 50 + 10 tokens
        append_record(data / "spend.jsonl", {"prompt_tokens": 50, "completion_tokens": 10})
    m = teacher_estimate(cfg(tmp_path))
    assert (m["prompt_tokens"], m["completion_tokens"]) == (20 * 100, 20 * 20) and m["how"].startswith("measured")


def test_unknown_price_and_budget_are_said(tmp_path):
    line = _teacher_line(cfg(tmp_path, "teacher.price.input_per_m=null", "data.budget.tokens=5000"))
    assert "cost ~unknown (set teacher.price)" in line and "data.budget: tokens=5000" in line
