"""The `score` hook end to end: answers streamed by the fake OpenAI-compatible server (real HTTP), code run
in the sandbox from a worker thread, records with the run's fields, resume without re-running, per-language
pass@1 in summary.json / eval_table.md / MLflow through the eval stage, distill vs base paired."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import mlflow

from cardforge.core.config.compose import compose
from cardforge.eval import harness, stats
from cardforge.eval.benchmarks import coding, humaneval
from cardforge.agent.client import Sampling
from support.fake_server import FakeServer
from cardforge.eval.harness import HarnessOptions, Question, run_questions
from cardforge.eval.records import read_records
from cardforge.eval.stage import run

GOOD = {
    "python/sum_evens": "Here it is:\n```python\ndef sum_evens(xs: list[int]) -> int:\n"
                        "    return sum(x for x in xs if x % 2 == 0)\n```\n",
    "c/sum_evens": "```c\nint sum_evens(const int *xs, int xs_len) {\n  int s = 0;\n"
                   "  for (int i = 0; i < xs_len; i++) if (xs[i] % 2 == 0) s += xs[i];\n  return s;\n}\n```",
    "bash/sum_evens": "```bash\nsum_evens() {\n  local s=0 x\n  while read -r x; do [ -n \"$x\" ] && (( x % 2 == 0 )) "
                      "&& (( s += x )); done <<< \"$1\"\n  echo $s\n}\n```",
}
WRONG_C = "```c\nint sum_evens(const int *xs, int xs_len) {\n  return xs_len;\n}\n```"
BROKEN_C = "```c\nint sum_evens(const int *xs, int xs_len) {\n  return 0\n}\n```"


def _script(answers: dict[str, str]):
    """Reply by question: the question's prompt holds its language's signature, so match on that."""
    by_prompt = {coding.prompt(qid.split("/")[0], _problem(qid)): a for qid, a in answers.items()}

    def script(messages):
        return by_prompt.get(messages[-1]["content"])
    return script


def _problem(qid):
    from cardforge.eval.coding.problems import BY_ID

    return BY_ID[qid.split("/")[1]]


def _opts():
    return HarnessOptions(Sampling(max_tokens=64), concurrency=3, timeout_s=10, retries=0, progress=False)


def test_score_hook_runs_answers_and_records_the_outcome(tmp_path):
    qs = coding.questions(["python", "c", "bash"], 1)
    out = tmp_path / "coding.jsonl"
    with FakeServer(script=_script(GOOD)) as srv:
        recs = run_questions(qs, srv.base_url, coding.parse, _opts(), out, label="m", suite="coding",
                             score=coding.score)
    assert [r["id"] for r in recs] == ["python/sum_evens", "c/sum_evens", "bash/sum_evens"]
    for r in recs:
        assert (r["correct"], r["status"], r["finish_reason"], r["exit_code"]) == (True, "passed", "stop", 0), r
        assert r["group"] == r["language"] == r["id"].split("/")[0] and r["problem"] == "sum_evens"
        assert r["tests_passed"] == r["tests_total"] == 6 and r["duration_s"] > 0
        assert r["parsed"].startswith(("def sum_evens", "int sum_evens", "sum_evens()"))
    s = stats.summarize(recs)
    assert s["accuracy"] == 1.0 and set(s["groups"]) == {"python", "c", "bash"}

    # a wrong answer replaces the c one: resume reruns nothing that finished, a changed sampling reruns all
    with FakeServer(script=_script({**GOOD, "c/sum_evens": WRONG_C})) as srv:
        again = run_questions(qs, srv.base_url, coding.parse, _opts(), out, label="m", suite="coding",
                              score=coding.score)
        assert srv.counts["scripted"] == 0 and again == recs
        opts = _opts()
        opts.sampling = Sampling(max_tokens=65)
        rerun = run_questions(qs, srv.base_url, coding.parse, opts, out, label="m", suite="coding",
                              score=coding.score)
    c = rerun[1]
    assert (c["correct"], c["status"], c["tests_passed"]) == (False, "wrong_answer", 1)
    assert "test 0: sum_evens([1, 2, 3, 4]) expected 6, got 4" in c["failures"]
    assert len(read_records(out)) == 6


def test_compile_errors_and_missing_code_are_records(tmp_path):
    qs = [q for q in coding.questions(["c", "python"], 2)]
    answers = {"c/sum_evens": BROKEN_C, "c/is_palindrome": "I cannot write C today.",
               "python/is_palindrome": "   "}
    out = tmp_path / "c.jsonl"

    def script(messages):
        text = messages[-1]["content"]
        if text == coding.prompt("python", _problem("python/sum_evens")):
            return None  # the fake server's default answer ("Answer: X"): prose, no code
        return _script(answers)(messages)

    with FakeServer(script=script) as srv:
        recs = {r["id"]: r for r in run_questions(qs, srv.base_url, coding.parse, _opts(), out, label="m",
                                                  suite="coding", score=coding.score)}
    broken = recs["c/sum_evens"]
    assert broken["status"] == "compile_error" and "error: expected" in broken["compile_error"]
    assert broken["exit_code"] == 1 and not broken["correct"]
    prose = recs["c/is_palindrome"]  # no fence: the whole answer is compiled, and fails to
    assert prose["status"] == "compile_error" and prose["parsed"] == "I cannot write C today.\n"
    assert recs["python/is_palindrome"]["status"] == "no_code" and recs["python/is_palindrome"]["parsed"] is None
    assert recs["python/sum_evens"]["status"] in ("compile_error", "runtime_error")


def test_unfinished_answers_are_never_run_nor_correct():
    q = coding.questions(["python"], 1)[0]
    right = GOOD["python/sum_evens"]
    for finish in ("length", "error"):
        c = harness.Completion(content=right, finish_reason=finish)
        r = harness.apply_score({"parsed": "x", "correct": True}, q, c, coding.score)
        assert (r["parsed"], r["correct"], r["status"]) == (None, False, "not_run")

    def boom(q, c):
        raise RuntimeError("scorer bug")
    r = harness.apply_score({"correct": False}, q, harness.Completion(content=right, finish_reason="stop"), boom)
    assert r["correct"] is False and r["score_error"] == "RuntimeError: scorer bug"


def test_scoring_runs_off_the_event_loop(tmp_path):
    """A slow scorer must not stall other requests: the loop keeps ticking while it runs."""
    ticks = []

    def slow_score(q, c):
        time.sleep(1.0)
        return {"correct": True, "scored_in": threading.current_thread().name}

    async def ticker():
        for _ in range(15):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.1)

    qs = [Question(f"q{i}", [{"role": "user", "content": f"QID=q{i} ANSWER=A"}], "A") for i in range(2)]

    def run_both():
        async def main():
            t = asyncio.create_task(ticker())
            await harness._run(qs, srv.base_url, lambda a: a, _opts(), tmp_path / "r.jsonl", "m", "s", slow_score)
            await t
        asyncio.run(main())

    with FakeServer() as srv:
        run_both()
    recs = read_records(tmp_path / "r.jsonl")
    assert all(r["correct"] and r["scored_in"] != "MainThread" for r in recs)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) < 0.5, gaps  # a blocking scorer would leave a 1 s gap


def test_stage_reports_pass_at_1_per_language_distill_vs_base(tmp_path, mlflow_uri, mlflow_experiment):
    base_answers = {**GOOD, "c/sum_evens": WRONG_C}
    from cardforge.core.humaneval import problems

    he = problems()[0]
    he_answer = f"```python\n{he['prompt']}{he['canonical_solution']}```"
    he_prompt = humaneval.PROMPT.format(prompt=he["prompt"])

    def with_humaneval(answers):
        inner = _script(answers)
        return lambda m: he_answer if m[-1]["content"] == he_prompt else inner(m)

    with FakeServer(script=with_humaneval(GOOD)) as d, FakeServer(script=with_humaneval(base_answers)) as b:
        cfg = compose("eval", [
            "experiment=tiny", f"eval.endpoint={d.base_url}", f"eval.base_endpoint={b.base_url}",
            "eval.suites=[humaneval,coding]", "eval.coding_languages=[python,c,bash]", "eval.coding_problems=1",
            "eval.limit=3", "eval.progress=false", "eval.mtp_n_max=[]",
            f"paths.outputs={tmp_path}", f"logger.experiment_name={mlflow_experiment}"])
        res = run(cfg)
    cod = res.summary["suites"]["coding"]
    assert cod["distill"]["accuracy"] == 1.0 and cod["base"]["accuracy"] == 2 / 3
    assert cod["base"]["groups"]["c"]["correct"] == 0 and cod["base"]["groups"]["python"]["correct"] == 1
    assert cod["delta"]["n"] == 3 and cod["delta"]["only_a"] == 1 and "pass@1" in cod["note"]
    he_sum = res.summary["suites"]["humaneval"]
    assert he_sum["distill"]["correct"] == he_sum["base"]["correct"] == 1 and he_sum["distill"]["n"] == 3
    he_recs = {r["id"]: r for r in read_records(tmp_path / "eval" / "distill" / "humaneval.jsonl")}
    assert he_recs["HumanEval/0"]["status"] == "passed" and he_recs["HumanEval/0"]["exit_code"] == 0
    prose = he_recs["HumanEval/1"]  # the fake server's default prose answer, run as Python
    assert prose["status"] == "compile_error" and "SyntaxError" in prose["compile_error"]
    table = (tmp_path / "eval" / "eval_table.md").read_text()
    assert "| coding/c | base | 0.0%" in table and "| coding/python | distill | 100.0%" in table
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["suites"]["coding"]["distill"]["groups"]["bash"]["ci95_low"] > 0
    m = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")[0].data.metrics
    assert m["distill.coding.pass_at_1"] == 1.0 and m["base.coding.c.pass_at_1"] == 0.0
    assert m["distill.coding.python.pass_at_1"] == 1.0 and "base.coding.bash.ci95_high" in m
    assert m["distill.humaneval.pass_at_1"] == 1 / 3 and "delta.coding.delta" in m


def test_a_cut_short_traceback_still_names_the_error(monkeypatch):
    """Fault injection: the candidate's stderr can end mid-traceback (the sandbox ends the candidate once the judge
    has answered; seen under load in a full test run). The record keeps the judge's verdict, which is always whole."""
    from types import SimpleNamespace

    from cardforge.core import humaneval as core_he
    from cardforge.core.sandbox.run import SandboxResult

    cut = SandboxResult(1, "", 'Traceback (most recent call last):\n  File "/work/cf_candidate.py", line 82, in <module>')
    whole = SandboxResult(1, "", cut.stderr + "\n    x = (\n        ^\nSyntaxError: '(' was never closed")
    q = harness.Question("HumanEval/1", [], "", {"problem": {}, "timeout_s": 5})
    c = SimpleNamespace(content="```python\nx = (\n```", finish_reason="stop")
    for sb, verdict in ((cut, "SyntaxError: '(' was never closed"), (whole, "SyntaxError: '(' was never closed"),
                        (cut, "ZeroDivisionError: division by zero")):
        monkeypatch.setattr(core_he, "check", lambda *a, sb=sb, verdict=verdict: core_he.HumanEvalResult(False, verdict, sb))
        rec = humaneval.score(q, c)
        err = rec["compile_error"] or rec["runtime_error"]
        assert verdict in err and "line 82" in err and err.count(verdict) == 1
        assert rec["status"] == ("compile_error" if verdict.startswith("SyntaxError") else "runtime_error")
