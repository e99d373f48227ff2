"""cardforge.core.sweep: per-job records of a multirun, summarized once the launcher returns."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings, strategies as st

from cardforge.core import sweep
from cardforge.core.tracking import SWEEP_RUN_FILE, get_or_create_experiment

STATUSES = st.sampled_from(["COMPLETED", "FAILED", "RUNNING"])


@given(st.lists(STATUSES, max_size=12), st.integers(0, 4))
@settings(max_examples=60, deadline=None)
def test_summary_counts_every_job_once_and_unfinished_ones_as_failed(statuses, never_started):
    records = [{"num": i, "status": s, "overrides": [f"lora.r={i}"]} for i, s in enumerate(statuses)]
    s = sweep.summarize(records, expected=len(records) + never_started)
    assert s["completed"] == statuses.count("COMPLETED")
    assert s["failed"] == len(statuses) - statuses.count("COMPLETED") + never_started
    assert s["missing"] == never_started
    assert all(j["status"] in ("COMPLETED", "FAILED") for j in s["jobs"])
    text = sweep.format_summary(s, "/sweep", "abc")
    assert text.splitlines()[0].startswith(f"[sweep] {len(statuses) + never_started} jobs: {s['completed']} completed")
    assert len(text.splitlines()) == 1 + len(statuses)


def test_finish_reports_each_job_and_fails_the_parent_run(tmp_path: Path, mlflow_uri, mlflow_experiment, capsys):
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    parent = client.create_run(get_or_create_experiment(mlflow_experiment, mlflow_uri), tags={"cardforge.sweep": "true"})
    (tmp_path / SWEEP_RUN_FILE).write_text(parent.info.run_id)
    jobs = tmp_path / sweep.JOBS_DIR
    jobs.mkdir()
    (jobs / "0.json").write_text(json.dumps({"num": 0, "status": "COMPLETED", "overrides": ["lora.r=8"]}))
    (jobs / "1.json").write_text(json.dumps({"num": 1, "status": "FAILED", "overrides": ["lora.r=16"],
                                             "error": "LoraTargetError: no_such_proj match no linear module"}))
    (jobs / "2.json").write_text(json.dumps({"num": 2, "status": "RUNNING", "overrides": ["lora.r=32"]}))
    sweep._open.update(dir=tmp_path, uri=mlflow_uri)
    summary = sweep.finish()
    assert sweep.finish() is None  # once
    err = capsys.readouterr().err
    assert "[sweep] 3 jobs: 1 completed, 2 failed" in err
    assert "#1 FAILED    lora.r=16: LoraTargetError: no_such_proj" in err
    assert "#2 FAILED    lora.r=32: the job never recorded its end (killed?)" in err
    assert json.loads((tmp_path / sweep.SUMMARY_FILE).read_text())["failed"] == summary["failed"] == 2
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["cardforge.sweep.failed_jobs"] == "2"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == [sweep.SUMMARY_FILE]


def test_finish_ends_the_parent_finished_when_every_job_completed(tmp_path: Path, mlflow_uri, mlflow_experiment):
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    parent = client.create_run(get_or_create_experiment(mlflow_experiment, mlflow_uri))
    (tmp_path / SWEEP_RUN_FILE).write_text(parent.info.run_id)
    for i in range(2):
        (tmp_path / sweep.JOBS_DIR).mkdir(exist_ok=True)
        (tmp_path / sweep.JOBS_DIR / f"{i}.json").write_text(json.dumps({"num": i, "status": "COMPLETED"}))
    sweep._open.update(dir=tmp_path, uri=mlflow_uri)
    assert sweep.finish()["failed"] == 0
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
