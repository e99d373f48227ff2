"""The agentic runner end to end: a scripted OpenAI-compatible server (real HTTP, streaming) plays each
task's oracle as the model; the tools really run in the sandbox; the checker reads the final workspace.
Faults mid-task become error records, resume asks only what did not finish, and the eval stage turns it
all into summary rows, paired deltas, MLflow metrics and transcript artifacts."""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from pathlib import Path

import mlflow
import pytest

from cardforge.core.chat import ToolCall, read_jsonl
from cardforge.core.config.compose import compose
from cardforge.agent.teacher import Teacher, call_xml
from cardforge.agent import llm_judge
from cardforge.eval import stats
from cardforge.eval.agentic import BY_ID
from cardforge.eval.agentic.runner import AgenticOptions, run_tasks
from cardforge.agent.client import Sampling
from support.fake_server import FakeServer
from cardforge.eval.harness import HarnessOptions
from cardforge.eval.records import read_records

_spec = importlib.util.spec_from_file_location(
    "agentic_oracles", Path(__file__).resolve().parents[1] / "unit" / "test_agentic_tasks.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
ORACLES: dict[str, list[ToolCall]] = _mod.ORACLES
FINISH = call_xml(ToolCall("finish", {"answer": "done"}))


def oracle_script(faults: dict[str, int] | None = None, idle: set[str] = frozenset(), broken: set[str] = frozenset()):
    """The model: for each task (found by its prompt), turn i plays oracle step i, then calls finish.
    faults {task id: turn}: HTTP 500 at that turn; idle: answers in words only; broken: malformed XML."""
    by_prompt = {t.prompt: t.id for t in BY_ID.values()}

    def script(messages):
        if messages[0]["content"].startswith("You judge"):
            return "REASON: the tool outputs show the files written\nVERDICT: PASS"
        tid = by_prompt.get(messages[1]["content"])
        if tid is None:
            return None
        turn = sum(m["role"] == "assistant" for m in messages)
        if (faults or {}).get(tid) == turn:
            return "FAULT=http500"
        if tid in idle:
            return "I have completed the task."
        if tid in broken:
            return "<tool_call>\n<function=shell>\n<parameter=command>\nls\n</function>\n</tool_call>"
        steps = ORACLES[tid]
        # the server cuts at the </tool_call> stop string; the runner's Teacher.ask puts it back
        return f"Step {turn}: next action.\n\n" + (call_xml(steps[turn]) if turn < len(steps) else FINISH)
    return script


def opts() -> HarnessOptions:
    return HarnessOptions(Sampling(max_tokens=256), concurrency=2, timeout_s=10, retries=1, progress=False)


def scripted_requests(srv) -> int:
    return json.loads(urllib.request.urlopen(srv.base_url + "/counts").read()).get("scripted", 0)


def test_oracle_episodes_pass_and_other_endings_are_recorded(tmp_path):
    tasks = [BY_ID[i] for i in ("top-ips", "fix-failing-tests", "tree-scaffold", "primes-file", "json-to-csv")]
    out = tmp_path / "distill" / "agentic.jsonl"
    with FakeServer(script=oracle_script(idle={"primes-file"}, broken={"json-to-csv"})) as srv:
        recs = run_tasks(tasks, srv.base_url, opts(), out, label="distill", suite="agentic")
    by = {r["id"]: r for r in recs}
    assert [r["id"] for r in recs] == [t.id for t in tasks] and len(read_records(out)) == 5
    for tid in ("top-ips", "fix-failing-tests", "tree-scaffold"):
        r, n = by[tid], len(ORACLES[tid])
        assert (r["correct"], r["finish_reason"], r["end"], r["parsed"], r["check"]) == (True, "stop", "tool_calls",
                                                                                          "pass", None), r
        assert r["steps"] == r["tool_calls"] == n + 1 and r["tool_names"][-1] == "finish"
        assert [q["finish_reason"] for q in r["requests"]] == ["stop"] * (n + 1)
        assert r["completion_tokens"] > 0 and r["answer"] == "done" and r["error"] is None
        assert r["prompt_hash"] and r["sampling_hash"] and r["category"] == BY_ID[tid].category
    assert by["fix-failing-tests"]["tool_names"] == ["shell", "python", "shell", "finish"]
    # words instead of actions: the episode ends cleanly, and the checker finds nothing done
    idle = by["primes-file"]
    assert (idle["correct"], idle["end"], idle["parsed"], idle["finish_reason"]) == (False, "stop", "fail", "stop")
    assert idle["check"] == "primes.txt does not exist" and idle["tool_calls"] == 0
    broken = by["json-to-csv"]  # malformed call markup: a parse failure, never repaired or executed
    assert (broken["correct"], broken["parsed"], broken["end_reason"]) == (False, None, "parse_error")
    assert stats.summarize(recs)["parse_fail"] == 1
    # transcripts: the full message list, with the sandbox's real outputs
    traj = read_jsonl(tmp_path / "distill" / "agentic_transcripts" / "top-ips.jsonl")[0][0]
    assert [m.role for m in traj.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert "10.0.0.7 9" not in traj.messages[3].content  # the awk wrote the file; the observation is its exit
    assert "[exit code 0]" in traj.messages[3].content and traj.messages[2].reasoning_content == "Scripted step."
    assert traj.extra["correct"] is True and "top_ips.txt" in traj.extra["files_after"]
    assert by["top-ips"]["transcript"] == "agentic_transcripts/top-ips.jsonl"


def test_a_server_error_mid_task_is_an_error_record_and_resume_asks_it_again(tmp_path):
    tasks = [BY_ID[i] for i in ("fix-mean-script", "dedupe-emails", "ini-edit")]
    out = tmp_path / "base" / "agentic.jsonl"
    with FakeServer(script=oracle_script(faults={"fix-mean-script": 1})) as srv:
        recs = run_tasks(tasks, srv.base_url, opts(), out, label="base", suite="agentic")
        first = scripted_requests(srv)
    by = {r["id"]: r for r in recs}
    err = by["fix-mean-script"]
    assert (err["finish_reason"], err["correct"], err["end"], err["parsed"]) == ("error", False, "error", None)
    assert "HTTP 500" in err["error"] and err["check"].startswith("not checked")
    assert [q["finish_reason"] for q in err["requests"]] == ["stop", "error"] and err["attempts"] == 3
    assert by["dedupe-emails"]["correct"] and by["ini-edit"]["correct"]  # the run went on
    assert first == 1 + 2 + 2 * 2  # mean: 1 ok + 2 failed attempts; the others: one action + finish each
    s = stats.summarize(recs)
    assert (s["correct"], s["n"], s["finish"]["error"]) == (2, 3, 1)

    with FakeServer(script=oracle_script()) as srv:  # resume: only the error record's task runs again
        recs = run_tasks(tasks, srv.base_url, opts(), out, label="base", suite="agentic")
        again = scripted_requests(srv)
    assert again == len(ORACLES["fix-mean-script"]) + 1
    assert all(r["correct"] and r["finish_reason"] == "stop" for r in recs)
    assert len(read_records(out)) == 4  # the newest record of an id wins
    assert len(read_jsonl(tmp_path / "base" / "agentic_transcripts" / "fix-mean-script.jsonl")[0]) == 2

    with FakeServer(script=oracle_script()) as srv:  # nothing left to do; a changed budget reruns
        run_tasks(tasks, srv.base_url, opts(), out, label="base", suite="agentic")
        assert scripted_requests(srv) == 0
        run_tasks(tasks[:1], srv.base_url, opts(), out, label="base", suite="agentic",
                  aopts=AgenticOptions(max_steps=2))
        assert scripted_requests(srv) == 2
    assert read_records(out)[-1]["end_reason"] == "max_steps" and read_records(out)[-1]["max_steps"] == 2


def test_the_llm_judge_verdict_is_recorded_beside_the_checker(tmp_path):
    with FakeServer(script=oracle_script(idle={"primes-file"})) as srv:
        judge = Teacher(srv.base_url, None, llm_judge.JUDGE_SAMPLING, 10, 0, 1, label="judge")
        recs = run_tasks([BY_ID["top-ips"], BY_ID["primes-file"]], srv.base_url, opts(), tmp_path / "a.jsonl",
                         aopts=AgenticOptions(judge=judge))
    assert [(r["correct"], r["judge_correct"]) for r in recs] == [(True, True), (False, True)]
    assert recs[0]["judge_reason"] == "the tool outputs show the files written"
    s = stats.summarize(recs)
    assert (s["accuracy"], s["judge_accuracy"], s["judge_agree"]) == (0.5, 1.0, 1)


def test_eval_stage_runs_agentic_and_bfcl_against_endpoints(tmp_path, mlflow_uri, mlflow_experiment):
    with FakeServer(script=oracle_script()) as distill, FakeServer(script=lambda m: "I cannot help.") as base:
        # the distilled "model" plays the oracles (and answers BFCL in words: irrelevance right, others wrong)
        cfg = compose("eval", [
            "experiment=tiny", f"eval.endpoint={distill.base_url}", f"eval.base_endpoint={base.base_url}",
            "eval.suites=[agentic,bfcl]", "eval.agentic_limit=3", "eval.agentic_max_steps=null", "eval.bfcl_limit=1",
            "eval.bfcl_sets=[simple_python,irrelevance]", "eval.progress=false", "eval.mtp_n_max=[]",
            f"paths.outputs={tmp_path}", f"logger.experiment_name={mlflow_experiment}"])
        from cardforge.eval.stage import run

        res = run(cfg)
    ag, bf = res.summary["suites"]["agentic"], res.summary["suites"]["bfcl"]
    assert (ag["distill"]["correct"], ag["base"]["correct"], ag["delta"]["delta"]) == (3, 0, 1.0)
    assert "3 of the 22 tasks" in ag["note"]
    assert bf["base"]["groups"]["irrelevance"]["correct"] == 1 and bf["base"]["groups"]["simple_python"]["correct"] == 0
    md = (tmp_path / "eval" / "eval_table.md").read_text()
    assert "| agentic | distill | 100.0% (43.9%–100.0%) | 3/3 |" in md and "| bfcl/irrelevance | base |" in md
    run_ = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")[0]
    m = run_.data.metrics
    assert m["distill.agentic.accuracy"] == 1.0 and m["delta.agentic.delta"] == 1.0
    assert m["base.bfcl.irrelevance.accuracy"] == 1.0 and "base.bfcl.simple_python.ci95_high" in m
    arts = mlflow.MlflowClient().list_artifacts(run_.info.run_id, "eval/records/distill/agentic_transcripts")
    assert {Path(a.path).name for a in arts} == {f"{t}.jsonl" for t in ("tree-scaffold", "rename-photos",
                                                                        "find-large-files")}
