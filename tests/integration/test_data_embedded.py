"""The data stage with the embedded teacher: llama-server + SmolLM2-135M started and stopped by the stage,
tools executed in the real sandbox, rule-based judge."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cardforge.core.chat import read_jsonl
from cardforge.core.config.compose import compose
from cardforge.data.stage import run
from cardforge.serve.process import ManagedServer

REASONS = {"teacher_error", "length", "unclosed_think", "parse_error", "bad_tool_call", "max_steps",
           "wrong_answer", "unverifiable"}


def test_embedded_teacher_smoke(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir, monkeypatch):
    stopped = []
    orig = ManagedServer.stop
    monkeypatch.setattr(ManagedServer, "stop", lambda self, *a, **k: stopped.append(self.port) or orig(self, *a, **k))
    cfg = compose("data", ["data=react_execute", "data.judge=true", "data.num_samples=2", "data.max_steps=2",
                           "data.min_accepted=0", "teacher.max_tokens=48", f"paths.outputs={tmp_path}",
                           f"logger.experiment_name={mlflow_experiment}"])
    res = run(cfg)
    assert stopped, "the stage must stop the llama-server it started"
    rejected = read_jsonl(res.rejections)[0] if Path(res.rejections).exists() else []
    records = read_jsonl(res.trajectories)[0] + rejected
    assert len(records) == 2 and {r.teacher for r in records} == {"smollm2-135m-instruct"}
    for r in records:
        assert r.verdict.status == "accepted" or r.extra["reason"] in REASONS, r.verdict
        assert r.finish_reason != "error", r.errors  # the embedded server answered every request
    assert (tmp_path / "data" / "manifest.json").exists()


@pytest.mark.slow
def test_tiny_default_accepts_something_within_5_minutes(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir):
    t0 = time.monotonic()
    res = run(compose("data", [f"paths.outputs={tmp_path}", f"logger.experiment_name={mlflow_experiment}"]))
    assert res.manifest["counts"]["accepted"] > 0
    assert time.monotonic() - t0 < 300


def test_nothing_accepted_stops_with_a_clear_error(tmp_path, mlflow_uri, mlflow_experiment):
    from cardforge.core.errors import UserError
    from support.fake_server import FakeServer

    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"id": "x", "prompt": "ANSWER=A pick", "verifier": {"type": "word", "word": "Z"}}\n')
    with FakeServer() as srv:
        cfg = compose("data", ["teacher=openai_endpoint", f"teacher.base_url={srv.base_url}/v1", "data=react_execute",
                               f"data.sources=[jsonl:{tasks}]", f"paths.outputs={tmp_path}", "model=smollm2_135m",
                               f"logger.experiment_name={mlflow_experiment}"])
        with pytest.raises(UserError, match=r"only 0 of 1 samples were accepted .*wrong_answer"):
            run(cfg)
