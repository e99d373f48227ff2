"""lm-eval's generate_until through `cardforge-stream`: a local-file task via include_path, finish_reason
kept per request, a failing request scored as empty instead of aborting, resume, results in MLflow."""

from __future__ import annotations

import json
import urllib.request

import mlflow

from cardforge.core.config.compose import compose
from support.fake_server import FakeServer
from cardforge.eval.records import read_records
from cardforge.eval.stage import run

TASK_DIR = "tests/fixtures/eval/lm_eval"


def test_lm_eval_task_runs_through_the_streaming_client(tmp_path, mlflow_uri, mlflow_experiment, repo_root,
                                                        monkeypatch):
    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with FakeServer() as srv:
        overrides = ["experiment=tiny", f"eval.endpoint={srv.base_url}", "eval.compare_base=false",
                     "eval.suites=[]", "eval.mtp_n_max=[]", "eval.retries=0", "eval.progress=false",
                     "eval.lm_eval_tasks=[cardforge_tiny_qa]", f"eval.lm_eval_include_path={repo_root / TASK_DIR}",
                     f"paths.outputs={tmp_path}", f"logger.experiment_name={mlflow_experiment}"]
        res = run(compose("eval", overrides))
        first = json.loads(urllib.request.urlopen(srv.base_url + "/counts").read())
        run(compose("eval", overrides))  # resume: only the failed request is asked again
        second = json.loads(urllib.request.urlopen(srv.base_url + "/counts").read())
    em = res.summary["lm_eval"]["distill"]["cardforge_tiny_qa"]["exact_match,none"]
    # l0, l1 right; l2 wrong target; l3 an HTTP 500 -> "" (recorded, not an abort). `until: \n` cut the answer.
    assert em == 0.5
    assert first == {"l0": 1, "l1": 1, "l2": 1, "l3": 1}
    assert second == {"l0": 1, "l1": 1, "l2": 1, "l3": 2}
    recs = read_records(tmp_path / "eval" / "distill" / "lm_eval.jsonl")
    assert sorted(r["finish_reason"] for r in recs[:4]) == ["error", "stop", "stop", "stop"]
    assert all(r["reasoning"] for r in recs if r["finish_reason"] == "stop")
    runs = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")
    assert runs[0].data.metrics["distill.lm_eval.cardforge_tiny_qa.exact_match.none"] == 0.5
