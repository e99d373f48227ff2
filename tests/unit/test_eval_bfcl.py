"""The bfcl suite: BFCL v4 sets from the bfcl-eval package, answers read by the Qwen3 XML parser and
AST-matched against the shipped possible answers; through the harness conventions on a real HTTP server."""

from __future__ import annotations

import json
import urllib.request

import pytest
from omegaconf import OmegaConf

from cardforge.core.chat import ToolCall
from cardforge.core.errors import UserError
from cardforge.agent.teacher import call_xml
from cardforge.eval import stats
from cardforge.eval.benchmarks import bfcl
from cardforge.agent.client import Completion, Sampling
from support.fake_server import FakeServer
from cardforge.eval.harness import HarnessOptions
from cardforge.eval.records import read_records
from cardforge.eval.stage import _suite_metrics, table

SETS = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]


def ev(**kw):
    return OmegaConf.create({"bfcl_sets": SETS, "bfcl_limit": None, "seed": 1234, "limit": None, **kw})


def oracle(ground_truth) -> str:
    """The first allowed value of every parameter, written as Qwen3 XML calls (what a perfect model says)."""
    calls = []
    for entry in ground_truth:
        (name, params), = entry.items()
        calls.append(ToolCall(name, {k: v[0] for k, v in params.items() if v and v[0] != ""}))
    return "\n".join(call_xml(c) for c in calls)


def stop(content: str) -> Completion:
    return Completion(content=content, finish_reason="stop")


def test_load_samples_each_set_and_interleaves_them():
    qs = bfcl.load(ev(bfcl_limit=3))
    assert len(qs) == 15 and len({q.id for q in qs}) == 15
    assert [q.meta["group"] for q in qs[:5]] == SETS  # round-robin: eval.limit keeps every set
    assert [q.id for q in bfcl.load(ev(bfcl_limit=3))] == [q.id for q in qs]  # seeded: same sample every run
    assert [q.meta["group"] for q in bfcl.load(ev(bfcl_limit=3, limit=4))] == SETS[:4]
    irr = next(q for q in qs if q.meta["group"] == "irrelevance")
    assert irr.gold == "no call" and irr.meta["ground_truth"] is None
    sys_prompt, user = irr.messages[0]["content"], irr.messages[1]["content"]
    # the tools as the data engine shows them to the teacher: JSON schemas in the system prompt, XML calls
    assert "<tools>" in sys_prompt and "<function=function_name>" in sys_prompt and "call nothing" in sys_prompt
    assert json.loads(sys_prompt.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()[0])["type"] == "function"
    assert user and "<tools>" not in user
    assert [q.meta["group"] for q in bfcl.load(ev(bfcl_sets=["simple"], bfcl_limit=2))] == ["simple_python"] * 2


@pytest.mark.parametrize("name", ["multi_turn_base", "simple_java", "no_such_set"])
def test_unsupported_sets_are_config_errors(name):
    with pytest.raises(UserError, match="eval.bfcl_sets"):
        bfcl.load(ev(bfcl_sets=[name]))


def test_every_possible_answer_written_as_xml_scores_correct():
    qs = bfcl.load(ev(bfcl_sets=SETS[:4]))
    assert len(qs) == 400 + 200 * 3
    wrong = {q.id: r["match"] for q in qs if not (r := bfcl.score(q, stop(oracle(q.meta["ground_truth"]))))["correct"]}
    # one BFCL item's only answer is a Python expression, "data['sales']", for an array parameter: the parser
    # types values by the schema and will not call that text an array; another's only answer passes `type`, which
    # the function's schema does not declare (it is a field of the `transactions` items): the parser refuses an
    # undeclared parameter instead of passing it on
    assert set(wrong) == {"parallel_multiple/parallel_multiple_21", "parallel_multiple/parallel_multiple_26"}, wrong
    assert "parameter 'type' is not in its schema" in wrong["parallel_multiple/parallel_multiple_26"]


def test_wrong_answers_are_wrong_with_a_reason():
    q = next(q for q in bfcl.load(ev(bfcl_sets=["parallel"], bfcl_limit=5)))
    gt = q.meta["ground_truth"]
    good = bfcl.score(q, stop(oracle(gt)))
    assert good["correct"] and good["parsed"] == good["tool_calls"] and len(good["parsed"]) == len(gt) > 1
    assert good["group"] == "parallel" and good["match"] == "ok"
    one_missing = bfcl.score(q, stop(oracle(gt[:-1])))
    assert not one_missing["correct"] and "call(s), expected" in one_missing["match"]
    renamed = oracle(gt).replace("<function=", "<function=x_", 1)
    assert "expected" in bfcl.score(q, stop(renamed))["match"]
    # reasoning before the calls is fine; markup that does not parse is a parse failure, never repaired
    assert bfcl.score(q, stop("I will call both.\n\n" + oracle(gt)))["correct"]
    broken = bfcl.score(q, stop(oracle(gt).replace("</function>", "", 1)))
    assert broken["parsed"] is None and not broken["correct"] and "unparseable" in broken["match"]
    length = bfcl.score(q, Completion(content=oracle(gt), finish_reason="length"))
    assert length["parsed"] is None and not length["correct"]


def test_irrelevance_is_correct_iff_nothing_is_called():
    qs = bfcl.load(ev(bfcl_sets=["irrelevance"]))
    assert len(qs) == 240
    for q in qs[:40]:
        fn = q.meta["tools"][0]["function"]["name"]
        assert bfcl.score(q, stop("None of the functions can do that."))["correct"]
        called = bfcl.score(q, stop(call_xml(ToolCall(fn, {}))))
        assert not called["correct"] and called["parsed"] == [{"name": fn, "arguments": {}}]


def _script(questions, faults=()):
    by_prompt = {q.messages[1]["content"]: q for q in questions}

    def script(messages):
        q = by_prompt[messages[1]["content"]]
        if q.id in faults:
            return "FAULT=http500"
        gt = q.meta["ground_truth"]
        # a model that goes on to invent the tool's result: the <tool_response> stop string cuts it off
        return ("No function fits." if gt is None else oracle(gt)) + "\n<tool_response>\n{\"ok\": 1}\n</tool_response>"
    return script


def test_run_suite_streams_scores_records_and_resumes(tmp_path):
    qs = bfcl.load(ev(bfcl_limit=2))
    out = tmp_path / "distill" / "bfcl.jsonl"
    opts = HarnessOptions(Sampling(max_tokens=64), concurrency=3, timeout_s=5, retries=1, progress=False)
    bad = qs[3].id
    with FakeServer(script=_script(qs, faults={bad})) as srv:
        recs = bfcl.run_suite(qs, srv.base_url, opts, out, label="distill", suite="bfcl")
        first = json.loads(urllib.request.urlopen(srv.base_url + "/counts").read())["scripted"]
    assert [r["id"] for r in recs] == [q.id for q in qs] and len(read_records(out)) == len(qs)
    by = {r["id"]: r for r in recs}
    assert by[bad]["finish_reason"] == "error" and "HTTP 500" in by[bad]["error"] and not by[bad]["correct"]
    ok = [r for r in recs if r["id"] != bad]
    assert all(r["finish_reason"] == "stop" and r["correct"] for r in ok), [r["match"] for r in ok]
    assert all(r["reasoning"] == "Scripted step." for r in ok) and all(r["group"] in SETS for r in recs)
    assert first == len(qs) + 1  # the failing item was retried once
    s = stats.summarize(recs)
    assert (s["n"], s["correct"], s["finish"]["error"]) == (10, 9, 1)
    assert s["groups"]["parallel"]["accuracy"] == 1.0 and s["groups"][qs[3].meta["group"]]["correct"] == 1
    # resume: only the errored item is asked again
    with FakeServer(script=_script(qs)) as srv:
        recs = bfcl.run_suite(qs, srv.base_url, opts, out, label="distill", suite="bfcl")
        again = json.loads(urllib.request.urlopen(srv.base_url + "/counts").read())["scripted"]
    assert again == 1 and all(r["correct"] for r in recs)


def test_groups_become_metrics_and_table_rows():
    recs = [{"id": f"q{i}", "group": g, "correct": i % 2 == 0, "finish_reason": "stop", "parsed": [],
             "completion_tokens": 5} for i, g in enumerate(["simple_python", "irrelevance"] * 3)]
    s = stats.summarize(recs)
    m = _suite_metrics("distill", "bfcl", s)
    assert m["distill.bfcl.accuracy"] == 0.5 and m["distill.bfcl.simple_python.accuracy"] == 1.0
    assert m["distill.bfcl.irrelevance.n"] == 3 and "distill.bfcl.irrelevance.ci95_high" in m
    md = table({"suites": {"bfcl": {"distill": s, "note": None}}})
    assert "| bfcl | distill | 50.0%" in md and "| bfcl/simple_python | distill | 100.0%" in md
    assert "| bfcl/irrelevance | distill | 0.0% (0.0%–56.1%) | 0/3 |" in md
