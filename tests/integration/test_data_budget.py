"""data.budget + teacher.price: the data stage prices every teacher answer into a durable ledger, stops
starting samples once the budget is spent (cleanly: the stage finishes with what it has), and a re-run with
a larger budget resumes; spend is an MLflow metric and a manifest field. Real HTTP to the fake teacher."""

from __future__ import annotations

import json

import mlflow
import pytest

from cardforge.core.chat import read_jsonl
from cardforge.core.chat.jsonl import read_records
from cardforge.core.config.compose import compose
from cardforge.core.errors import UserError
from cardforge.data.stage import run
from support.fake_server import FakeServer

N = 5


def setup(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"QID=t{i} ANSWER=B Which letter?",
                                         "verifier": {"type": "word", "word": "B"}}) + "\n" for i in range(N)))
    return tasks


def cfg_for(url, tasks, out, experiment, *extra):
    return compose("data", ["teacher=openai_endpoint", f"teacher.base_url={url}/v1", "teacher.model=fake",
                            "teacher.timeout_s=10", "teacher.concurrency=1", "teacher.price.input_per_m=2.0",
                            "teacher.price.output_per_m=8.0", "data=react_execute", f"data.sources=[jsonl:{tasks}]",
                            "data.retries=0", f"paths.outputs={out}", f"logger.experiment_name={experiment}", *extra])


def test_budget_stops_cleanly_and_a_larger_budget_resumes(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir):
    tasks, out = setup(tmp_path), tmp_path / "out"
    with FakeServer() as srv:
        # each answer: 4 prompt words + 12 completion tokens = 16 tokens; a 40-token budget is spent after 3
        res = run(cfg_for(srv.base_url, tasks, out, mlflow_experiment, "data.budget.tokens=40"))
        s = res.manifest["spend"]
        assert (s["requests"], s["prompt_tokens"], s["completion_tokens"]) == (3, 12, 36)
        assert s["tokens"] == 48 and s["cost"] == pytest.approx((12 * 2.0 + 36 * 8.0) / 1e6)
        assert s["reasoning_tokens"] == 3 and s["priced"] and s["currency"] == "USD"
        assert s["stopped_by_budget"].startswith("teacher tokens 48 >= data.budget.tokens=40")
        assert s["not_started"] == 2 and s["budget"] == {"tokens": 40, "cost": None}
        assert res.manifest["counts"]["samples"] == 3  # the unstarted samples are not recorded
        assert len(read_records(out / "data" / "spend.jsonl")) == 3
        metrics = mlflow.get_run(res.run_id).data.metrics
        assert metrics["data.spend.tokens"] == 48 and metrics["data.spend.stopped_by_budget"] == 1.0
        assert metrics["data.spend.cost"] == pytest.approx(s["cost"])

        # the same budget again: spent already, nothing is asked
        seen = dict(srv.counts)
        again = run(cfg_for(srv.base_url, tasks, out, mlflow_experiment, "data.budget.tokens=40"))
        assert dict(srv.counts) == seen and again.manifest["spend"]["not_started"] == 2

        # a larger budget (money this time) resumes: the two missing samples, nothing twice
        done = run(cfg_for(srv.base_url, tasks, out, mlflow_experiment, "data.budget.cost=1.0"))
        assert done.manifest["spend"]["requests"] == N and done.manifest["spend"]["stopped_by_budget"] is None
        assert not (out / "data" / "rejections.jsonl").exists()  # every sample was answered and accepted
        ids = sorted(t.task_id for t in read_jsonl(done.trajectories)[0])
        assert ids == [f"t{i}#0" for i in range(N)] and all(v == 1 for v in srv.counts.values())


def test_a_money_budget_needs_a_price(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir):
    tasks = setup(tmp_path)
    cfg = cfg_for("http://127.0.0.1:9", tasks, tmp_path / "out", mlflow_experiment, "data.budget.cost=5",
                  "teacher.price.input_per_m=null")
    with pytest.raises(UserError, match="data.budget.cost needs teacher.price"):
        run(cfg)


def test_a_stream_that_breaks_off_is_spent_all_the_same(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir):
    # the first answer breaks off after two streamed chunks (the server generated and bills them, no usage comes);
    # the retry completes: the ledger counts both attempts' output and the prompt read twice
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "t0", "prompt": "QID=t0 ANSWER=B FAULT=drop_once Which letter?",
                                 "verifier": {"type": "word", "word": "B"}}) + "\n")
    out = tmp_path / "out"
    with FakeServer() as srv:
        cfg = cfg_for(srv.base_url, tasks, out, mlflow_experiment)
        cfg.data.retries = 1
        res = run(cfg)
        assert srv.counts["t0"] == 2
    s = res.manifest["spend"]
    words = 5  # the fake server's prompt_tokens: the words of the user message
    assert (s["requests"], s["prompt_tokens"], s["completion_tokens"]) == (1, 2 * words, 12 + 2)
    assert s["cost"] == pytest.approx((2 * words * 2.0 + 14 * 8.0) / 1e6)
    (line,) = read_records(out / "data" / "spend.jsonl")
    assert (line["dropped_tokens"], line["dropped_attempts"]) == (2, 1)
