"""The streaming harness against the fault-injecting server (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from cardforge.eval.benchmarks.letters import parse_letter
from cardforge.agent.client import Sampling
from support.fake_server import FakeServer
from cardforge.eval.harness import HarnessOptions, Question, run_questions
from cardforge.eval.records import append_record, read_records

FAULTS = ["none", "slow:3", "http500", "http500_once", "drop", "badjson", "length"]


def _qs(faults=FAULTS):
    return [Question(f"q{i}", [{"role": "user", "content": f"QID=q{i} ANSWER=B FAULT={f}"}], "B")
            for i, f in enumerate(faults)]


def _opts(sampling=Sampling(max_tokens=16), **kw):
    return HarnessOptions(sampling, **{"concurrency": 4, "timeout_s": 1.0, "retries": 1,
                                                      "progress": False, **kw})


def _counts(srv) -> dict:
    return json.loads(urllib.request.urlopen(srv.base_url + "/counts").read())


@pytest.mark.parametrize("think_tags", [False, True], ids=["reasoning_content", "think_tags"])
def test_every_fault_is_recorded_and_the_run_completes(tmp_path, think_tags):
    out = tmp_path / "r.jsonl"
    with FakeServer(think_tags=think_tags) as srv:
        t0 = time.monotonic()
        recs = run_questions(_qs(), srv.base_url, parse_letter, _opts(), out, label="m", suite="s")
        counts = _counts(srv)
    assert time.monotonic() - t0 < 20
    by = {r["id"]: r for r in recs}
    assert len(recs) == len(FAULTS) == len(read_records(out))
    ok = by["q0"]
    assert (ok["finish_reason"], ok["parsed"], ok["correct"], ok["attempts"]) == ("stop", "B", True, 1)
    assert ok["reasoning"] == "Let me think about the choices." and ok["answer"].endswith("Answer: B")
    assert "Answer" not in ok["reasoning"] and ok["completion_tokens"] == 12 and ok["ttft_s"] <= ok["latency_s"]
    assert ok["reasoning_tokens"] == (None if think_tags else 1)  # streamed reasoning chunks; <think> in content: unknown
    assert ok["prompt_hash"] and ok["timings"]["draft_n"] == 0
    assert by["q1"]["finish_reason"] == "error" and "timeout" in by["q1"]["error"]
    assert by["q2"]["finish_reason"] == "error" and "HTTP 500" in by["q2"]["error"]
    assert by["q3"]["finish_reason"] == "stop" and by["q3"]["correct"] and by["q3"]["attempts"] == 2
    assert by["q4"]["finish_reason"] == "error" and "closed mid-answer" in by["q4"]["error"]
    assert by["q5"]["finish_reason"] == "error" and "invalid JSON" in by["q5"]["error"]
    # truncated in the thought: a length finish with no answer is a parse failure, never a guessed letter
    assert (by["q6"]["finish_reason"], by["q6"]["parsed"], by["q6"]["answer"]) == ("length", None, "")
    assert counts == {"q0": 1, "q1": 2, "q2": 2, "q3": 2, "q4": 2, "q5": 2, "q6": 1}  # retries = 1


def test_resume_sends_only_unfinished_questions(tmp_path):
    out = tmp_path / "r.jsonl"
    qs = _qs(["none", "none", "http500", "length"])
    with FakeServer() as srv:
        run_questions(qs, srv.base_url, parse_letter, _opts(retries=0), out)
        first = _counts(srv)
        recs = run_questions(qs, srv.base_url, parse_letter, _opts(retries=0), out)
        second = _counts(srv)
    assert first == {"q0": 1, "q1": 1, "q2": 1, "q3": 1}
    assert second == {"q0": 1, "q1": 1, "q2": 2, "q3": 1}  # only the error is asked again
    assert [r["id"] for r in recs] == ["q0", "q1", "q2", "q3"] and len(read_records(out)) == 5
    # a changed prompt or sampling is not "finished": it runs again
    with FakeServer() as srv:
        run_questions(qs[:1], srv.base_url, parse_letter, _opts(sampling=Sampling(max_tokens=17)), out)
        assert _counts(srv) == {"q0": 1}


def test_torn_last_line_is_skipped_and_cut(tmp_path):
    out = tmp_path / "r.jsonl"
    append_record(out, {"id": "a"})
    with open(out, "ab") as f:
        f.write(b'{"id": "torn", "rea')  # a writer killed mid-line
    assert [r["id"] for r in read_records(out)] == ["a"]
    append_record(out, {"id": "b"})
    assert out.read_text().splitlines() == ['{"id": "a"}', '{"id": "b"}']


def test_resume_is_keyed_by_the_served_model(tmp_path):
    """A rebuilt model (another model_id) is asked every question again; its answers never count for the
    other build, and switching back reuses the first build's finished answers (append-only file)."""
    out = tmp_path / "r.jsonl"
    qs = _qs(["none", "none", "length"])
    ids = ["q0", "q1", "q2"]
    with FakeServer() as srv:
        a = run_questions(qs, srv.base_url, parse_letter, _opts(model_id="gguf-sha256:aaa"), out)
        assert _counts(srv) == dict.fromkeys(ids, 1)
        b = run_questions(qs, srv.base_url, parse_letter, _opts(model_id="gguf-sha256:bbb"), out)
        assert _counts(srv) == dict.fromkeys(ids, 2)  # model B: all re-asked, none of A's answers reused
        again_a = run_questions(qs, srv.base_url, parse_letter, _opts(model_id="gguf-sha256:aaa"), out)
        again_b = run_questions(qs, srv.base_url, parse_letter, _opts(model_id="gguf-sha256:bbb"), out)
        assert _counts(srv) == dict.fromkeys(ids, 2)  # back to A, then B again: nothing asked
    assert [r["model_id"] for r in a] == ["gguf-sha256:aaa"] * 3 and [r["model_id"] for r in b] == ["gguf-sha256:bbb"] * 3
    assert again_a == a and again_b == b  # each model gets its own records back, not the newest in the file
    assert len(read_records(out)) == 6  # append-only: nothing lost, nothing written twice


def test_records_without_a_model_id_are_asked_again(tmp_path):
    out = tmp_path / "r.jsonl"
    qs = _qs(["none", "none"])
    with FakeServer() as srv:
        run_questions(qs, srv.base_url, parse_letter, _opts(), out)  # written before model ids existed
        run_questions(qs, srv.base_url, parse_letter, _opts(model_id="gguf-sha256:aaa"), out)
        assert _counts(srv) == {"q0": 2, "q1": 2}
        # rerun with the same model id: its own finished records count, nothing is asked
        recs = run_questions(qs, srv.base_url, parse_letter, _opts(model_id="gguf-sha256:aaa"), out)
        assert _counts(srv) == {"q0": 2, "q1": 2}
    assert {r["model_id"] for r in recs} == {"gguf-sha256:aaa"}


def test_eval_idle_timeout_is_the_configs_and_reaches_every_request(tmp_path):
    """eval.idle_timeout_s (the longest silence) is a config key apart from eval.timeout_s (the total cap): a
    stalled server is cut after that silence, not after the cap."""
    from cardforge.core.config.compose import compose
    from cardforge.eval.stage import options

    cfg = compose("eval", ["experiment=tiny", "eval.idle_timeout_s=0.5", "eval.timeout_s=60", "eval.retries=0",
                           "eval.progress=false"])
    opts = options(cfg)
    assert (opts.idle_timeout_s, opts.timeout_s) == (0.5, 60.0)
    with FakeServer() as srv:
        t0 = time.monotonic()
        (r,) = run_questions([Question("s", [{"role": "user", "content": "QID=s ANSWER=B FAULT=stall:4"}], "B")],
                             srv.base_url, parse_letter, opts, tmp_path / "r.jsonl")
        took = time.monotonic() - t0
    assert r["finish_reason"] == "error" and "idle timeout: no byte for 0.5 s" in r["error"], r
    assert took < 3.0  # cut at the silence, not at the 4 s stall nor the 60 s cap
