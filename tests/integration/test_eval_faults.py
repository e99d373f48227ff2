"""kill -9 mid-run, then rerun: nothing that finished is sent again (a real stage subprocess, a real
fault-injecting HTTP server that counts requests per question)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from cardforge.core.config.compose import compose
from cardforge.eval.benchmarks import gpqa, mmlu
from support.fake_server import FakeServer
from cardforge.eval.records import read_records


def _stage(url: str, out, experiment: str) -> list[str]:
    return [sys.executable, "-m", "cardforge.eval", "experiment=tiny", f"eval.endpoint={url}",
            "eval.compare_base=false", "eval.mtp_n_max=[]", "eval.concurrency=1", "eval.progress=false",
            f"paths.outputs={out}", f"logger.experiment_name={experiment}"]


def test_kill9_then_resume_sends_nothing_finished_again(tmp_path, mlflow_uri, mlflow_experiment, repo_root):
    out = tmp_path / "out"
    cfg = compose("eval", ["experiment=tiny"])
    qs = {"gpqa_diamond": gpqa.load(cfg.eval, repo_root), "mmlu": mmlu.load(cfg.eval, repo_root)}
    key = {q.id: hashlib.sha256(q.messages[-1]["content"].encode()).hexdigest()[:12] for s in qs for q in qs[s]}
    with FakeServer(delay_s=0.3) as srv:
        proc = subprocess.Popen(_stage(srv.base_url, out, mlflow_experiment), cwd=repo_root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        gfile = out / "eval" / "distill" / "gpqa_diamond.jsonl"
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline and len(read_records(gfile)) < 3:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = {r["id"] for r in read_records(gfile) if r["finish_reason"] == "stop"}
        assert 3 <= len(before) < len(qs["gpqa_diamond"]), proc.stderr.read().decode()[-2000:]
        done = subprocess.run(_stage(srv.base_url, out, mlflow_experiment), cwd=repo_root, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        counts = json.loads(urllib.request.urlopen(srv.base_url + "/counts").read())
    for qid in before:
        assert counts[key[qid]] == 1, f"{qid} finished before the kill but was sent again"
    assert sum(counts.values()) <= len(key) + 1  # at most the one request in flight at the kill is repeated
    for suite, questions in qs.items():
        recs = {r["id"]: r for r in read_records(out / "eval" / "distill" / f"{suite}.jsonl")}
        assert set(recs) == {q.id for q in questions}
        assert all(r["finish_reason"] == "stop" for r in recs.values())
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["suites"]["gpqa_diamond"]["distill"]["n"] == len(qs["gpqa_diamond"])
    assert "smoke set" in summary["suites"]["gpqa_diamond"]["note"]
