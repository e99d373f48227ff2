"""Data stage against a fault-injecting teacher (real HTTP): faults are recorded with their reason and the
run goes on; a re-run asks nothing again; kill -9 mid-run then re-run -> no duplicate, no torn line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cardforge.core.chat import read_jsonl
from cardforge.core.config.compose import compose
from cardforge.data.stage import run
from cardforge.eval.fake_server import FakeServer

FAULTS = {"ok": "", "retry": "FAULT=http500_once", "http500": "FAULT=http500", "timeout": "FAULT=slow:3",
          "length": "FAULT=length", "drop": "FAULT=drop", "badjson": "FAULT=badjson"}


def write_tasks(path: Path, names) -> Path:
    lines = [json.dumps({"id": n, "prompt": f"QID={n} ANSWER=B {tags} Which letter?",
                         "verifier": {"type": "word", "word": "B"}}) for n, tags in names.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def overrides(url: str, tasks: Path, out: Path, experiment: str, *extra: str) -> list[str]:
    return ["teacher=openai_endpoint", f"teacher.base_url={url}/v1", "teacher.model=fake", "teacher.timeout_s=1",
            "teacher.concurrency=2", "data=react_execute", f"data.sources=[jsonl:{tasks}]", "data.retries=1",
            f"paths.outputs={out}", f"logger.experiment_name={experiment}", *extra]


def counts(url: str) -> dict:
    with urllib.request.urlopen(url + "/counts") as r:
        return json.load(r)


def test_faults_are_recorded_and_rerun_asks_nothing(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir):
    tasks = write_tasks(tmp_path / "tasks.jsonl", FAULTS)
    with FakeServer() as srv:
        cfg = compose("data", overrides(srv.base_url, tasks, tmp_path / "out", mlflow_experiment))
        res = run(cfg)
        rej = {t.task_id: t.extra["reason"] for t in read_jsonl(res.rejections)[0]}
        assert rej == {"http500#0": "teacher_error", "timeout#0": "teacher_error", "length#0": "length",
                       "drop#0": "teacher_error", "badjson#0": "teacher_error"}
        acc = read_jsonl(res.trajectories)[0]
        assert sorted(t.task_id for t in acc) == ["ok#0", "retry#0"]
        assert all(t.messages[-1].reasoning_content for t in acc)  # the reasoning field was kept apart
        m = res.manifest
        assert m["counts"]["accepted"] == 2 and m["rejections"]["teacher_error"] == 4
        assert m["tokens"]["trained_tokens"] > 0 and 0 < m["tokens"]["trained_fraction"] < 1
        before = counts(srv.base_url)
        assert before["retry"] == 2 and before["http500"] == 2  # retries: 1 + data.retries
        again = run(cfg)
        assert counts(srv.base_url) == before  # nothing re-requested
        assert again.manifest["sha256"] == m["sha256"]
        # data.retry_errors=true asks again only for the transient failures
        run(compose("data", overrides(srv.base_url, tasks, tmp_path / "out", mlflow_experiment,
                                      "data.retry_errors=true")))
        after = counts(srv.base_url)
        assert after["http500"] == 4 and after["ok"] == before["ok"] and after["length"] == before["length"]
        assert len(read_jsonl(res.rejections)[0]) == 5


def test_kill_9_mid_run_then_rerun_has_no_duplicate(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir):
    names = {f"q{i:02d}": "" for i in range(16)}
    tasks = write_tasks(tmp_path / "tasks.jsonl", names)
    out = tmp_path / "out"
    accepted = out / "data" / "trajectories.jsonl"
    server = subprocess.Popen([sys.executable, "-m", "cardforge.eval.fake_server", "--port", "0", "--delay", "0.4"],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[-1]
        cmd = [sys.executable, "-m", "cardforge.data",
               *overrides(url, tasks, out, mlflow_experiment, "teacher.timeout_s=10")]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if accepted.exists() and accepted.read_bytes().count(b"\n") >= 4:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        first = {t.task_id for t in read_jsonl(accepted)[0]}
        assert 4 <= len(first) < 16
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        raw = accepted.read_bytes()
        assert raw.endswith(b"\n")
        ids = [json.loads(line)["task_id"] for line in raw.splitlines()]
        assert sorted(ids) == sorted(f"{n}#0" for n in names)  # every sample once
        seen = counts(url)
        assert all(seen[i.split("#")[0]] == 1 for i in first)  # a finished sample is never asked again
        assert sum(seen.values()) <= len(names) + 2  # at most the in-flight ones (concurrency 2) twice
        manifest = json.loads((out / "data" / "manifest.json").read_text())
        assert manifest["counts"]["accepted"] == 16
    finally:
        server.kill()
        server.wait()
