"""Data stage against a fault-injecting teacher (real HTTP): faults are recorded with their reason and the
run goes on; a re-run asks again only for outages (teacher/simulator errors, data.max_retries runs at most);
kill -9 mid-run then re-run -> no duplicate, no torn line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cardforge.core.chat import read_jsonl
from cardforge.core.config.compose import compose
from cardforge.data.stage import run
from support import fake_server
from support.fake_server import FakeServer

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


def test_faults_are_recorded_and_rerun_asks_again_only_for_outages_up_to_the_cap(
        tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir, capfd):
    tasks = write_tasks(tmp_path / "tasks.jsonl", FAULTS)
    with FakeServer() as srv:
        cfg = compose("data", overrides(srv.base_url, tasks, tmp_path / "out", mlflow_experiment,
                                        "data.max_retries=1"))
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
        # what happened and what to do, in one line
        err = capfd.readouterr().err
        # progress (issue 25 item 7): a line per sample against the total, an ETA until the last
        bars = [ln for ln in err.splitlines() if re.match(r"\[cardforge\.data\] \d+/\d+ samples \(", ln)]
        assert bars[-1].startswith("[cardforge.data] 7/7 samples (100%) ") and "ETA" not in bars[-1]
        assert any(ln.startswith("[cardforge.data] 1/7 samples (14%) ") and ", ETA " in ln for ln in bars), bars
        note = next(line for line in err.splitlines() if "did not answer" in line)
        assert "4 sample(s) failed because the teacher/simulator did not answer" in note
        assert "the next run asks again for 4 of them (data.max_retries=1" in note and "teacher.base_url" in note
        # the next run asks again for the outages (by default), never for a real rejection (length) or a success
        run(cfg)
        after = counts(srv.base_url)
        assert after["http500"] == 4 and after["drop"] == 2 * before["drop"]
        assert after["ok"] == before["ok"] and after["length"] == before["length"] and after["retry"] == before["retry"]
        assert "all have been asked again data.max_retries=1 times" in capfd.readouterr().err
        # the cap is reached: a third run asks nothing
        again = run(cfg)
        assert counts(srv.base_url) == after
        assert again.manifest["sha256"] == m["sha256"]
        assert len(read_jsonl(res.rejections)[0]) == 5
        # data.retry_errors=false never asks again, and says how to
        run(compose("data", overrides(srv.base_url, tasks, tmp_path / "out2", mlflow_experiment,
                                      "data.retry_errors=false")))
        first = counts(srv.base_url)
        run(compose("data", overrides(srv.base_url, tasks, tmp_path / "out2", mlflow_experiment,
                                      "data.retry_errors=false")))
        assert counts(srv.base_url) == first
        assert "set data.retry_errors=true to ask again" in capfd.readouterr().err


def test_kill_9_mid_run_then_rerun_has_no_duplicate(tmp_path, mlflow_uri, mlflow_experiment, tiny_model_dir):
    names = {f"q{i:02d}": "" for i in range(16)}
    tasks = write_tasks(tmp_path / "tasks.jsonl", names)
    out = tmp_path / "out"
    accepted = out / "data" / "trajectories.jsonl"
    server = subprocess.Popen([sys.executable, str(Path(fake_server.__file__)), "--port", "0", "--delay", "0.4"],
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
        # MLflow tells the truth: the killed run is KILLED (not RUNNING forever), the rerun links to it
        from mlflow import MlflowClient

        client = MlflowClient(mlflow_uri)
        exp = client.get_experiment_by_name(mlflow_experiment)
        runs = {r.info.status: r for r in client.search_runs([exp.experiment_id])}
        assert sorted(runs) == ["FINISHED", "KILLED"]
        assert runs["KILLED"].info.run_name.endswith(" [killed]")
        assert runs["KILLED"].data.tags["cardforge.pid"] == str(proc.pid)
        assert runs["FINISHED"].data.tags["resumed_from"] == runs["KILLED"].info.run_id
        assert runs["FINISHED"].info.run_name.endswith(" [resumed]")
    finally:
        server.kill()
        server.wait()


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats") as r:
        return json.load(r)


def test_card_teacher_preset_key_concurrency_k_samples_and_logged_dataset(tmp_path, monkeypatch, mlflow_uri,
                                                                          mlflow_experiment, tiny_model_dir):
    """teacher=deepseek_v4_pro against a local endpoint: the key from $DEEPSEEK_API_KEY is sent, at most
    teacher.concurrency requests are in flight (and that many are reached), k samples per task each get their own
    id, and the data run in MLflow holds the JSONL, manifest and table with the manifest's hash as a tag."""
    import mlflow

    tasks = write_tasks(tmp_path / "tasks.jsonl", {"t0": "", "t1": ""})
    with FakeServer(delay_s=0.3) as srv:
        monkeypatch.setenv("TEACHER_BASE_URL", srv.base_url + "/v1")
        monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test-123")
        cfg = compose("data", ["teacher=deepseek_v4_pro", "teacher.concurrency=2", "teacher.timeout_s=10",
                               "data=react_execute", f"data.sources=[jsonl:{tasks}]", "data.samples_per_task=3",
                               f"paths.outputs={tmp_path / 'out'}", f"logger.experiment_name={mlflow_experiment}"])
        res = run(cfg)
        seen = stats(srv.base_url)
    assert seen["authorization"] == "Bearer sk-test-123"
    assert seen["peak_in_flight"] == 2  # bounded by teacher.concurrency, and the bound is reached
    assert seen["models"] == {"deepseek-v4-pro": 6}
    ids = sorted(t.task_id for t in read_jsonl(res.trajectories)[0])
    assert ids == ["t0#0", "t0#1", "t0#2", "t1#0", "t1#1", "t1#2"]
    run_ = mlflow.get_run(res.run_id)
    assert run_.data.tags["data.sha256"] == res.manifest["sha256"]
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(res.run_id, "data")}
    assert {"data/trajectories.jsonl", "data/manifest.json", "data/table.md"} <= logged
    assert run_.data.metrics["data.accepted"] == 6


def test_simulated_tool_results_come_from_the_simulator_endpoint(tmp_path, mlflow_uri, mlflow_experiment,
                                                                 tiny_model_dir):
    """data=react_simulate with data.simulator_url: the teacher's tool call is answered by the second endpoint
    (role-playing the runtime), nothing is executed, and the result lands in the trajectory as the tool turn."""
    from support.fake_server import conversation_script

    call = ("<tool_call>\n<function=python>\n<parameter=code>\nprint(6 * 7)\n</parameter>\n</function>\n"
            "</tool_call>")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "mul", "prompt": "What is 6*7? Use python.",
                                 "verifier": {"type": "word", "word": "42"}}) + "\n")
    teacher = FakeServer(script=conversation_script({"What is 6*7": [call, "The answer is 42."]}))
    simulator = FakeServer(script=lambda messages: "42\n")
    with teacher, simulator:
        cfg = compose("data", ["teacher=openai_endpoint", f"teacher.base_url={teacher.base_url}/v1",
                               "teacher.model=fake", "teacher.timeout_s=10", "data=react_simulate",
                               f"data.sources=[jsonl:{tasks}]", f"data.simulator_url={simulator.base_url}/v1",
                               "data.simulator_model=runtime-sim", f"paths.outputs={tmp_path / 'out'}",
                               f"logger.experiment_name={mlflow_experiment}", "data.min_accepted=1"])
        res = run(cfg)
        sim_seen, teacher_seen = stats(simulator.base_url), stats(teacher.base_url)
    (traj,), _ = read_jsonl(res.trajectories)
    tool = [m for m in traj.messages if m.role == "tool"]
    assert [m.content.strip() for m in tool] == ["42"]
    assert sim_seen["models"] == {"runtime-sim": 1} and teacher_seen["models"] == {"fake": 2}
    assert res.manifest["tool_results"] == "simulate"
