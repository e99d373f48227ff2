"""The pipeline when a stage fails or is killed, against a real MLflow store: the stage's run and the parent end
FAILED / KILLED (never left RUNNING), the next invocation resumes at that stage, and each stage's peak memory is
logged. Stand-in stages (opening their run as the real ones do) keep it fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cardforge.core import tracking
from cardforge.core.config.compose import compose
from cardforge.pipeline import run as pipeline_run
from cardforge.pipeline.run import StageSpec

SPECS = [StageSpec("first", "standin:first", 0, ("data",)), StageSpec("second", "standin:second", 0, ("lora",)),
         StageSpec("third", "standin:third", 0, ("quant",))]


class Boom(RuntimeError):
    pass


def standins(calls: list[str], fail: dict[str, BaseException], alloc_mib: dict[str, int] | None = None):
    def make(name):
        def stage(cfg):
            calls.append(name)
            with tracking.stage_run(cfg, name):
                ballast = bytearray((alloc_mib or {}).get(name, 0) * 2**20)
                for i in range(0, len(ballast), 4096):  # touch every page: resident, not just reserved
                    ballast[i] = 1
                if name in fail:
                    raise fail[name]
                return {"stage": name}
        return stage

    return lambda target: make(target.partition(":")[2])


def _cfg(experiment: str, out: Path):
    return compose("pipeline", [f"logger.experiment_name={experiment}", f"paths.outputs={out}"])


def _runs(uri: str, experiment: str) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        out.setdefault(r.data.tags["cardforge.stage"], []).append(r)
    return out


def test_failed_stage_marks_its_run_and_the_parent_failed_and_the_next_run_resumes_there(
        mlflow_uri, mlflow_experiment, tmp_path, monkeypatch):
    cfg = _cfg(mlflow_experiment, tmp_path / "out")
    calls: list[str] = []
    monkeypatch.setattr(pipeline_run, "resolve_stage", standins(calls, {"second": Boom("disk full")}))
    with pytest.raises(Boom):
        pipeline_run.run(cfg, stages=SPECS)
    assert calls == ["first", "second"]
    runs = _runs(mlflow_uri, mlflow_experiment)
    (parent,) = runs["pipeline"]
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in runs["first"]] == ["FINISHED"]
    assert [r.info.status for r in runs["second"]] == ["FAILED"]
    assert runs["second"][0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "third" not in runs
    assert parent.data.tags["cardforge.failed_at"] == "second"
    assert parent.data.tags["cardforge.failure"] == "Boom: disk full"
    assert parent.data.tags["cardforge.stages_done"] == "first"
    assert not (tmp_path / "out" / ".pipeline" / "second.json").exists()  # no record: not done

    # fixed: the next invocation skips the finished stage and resumes at the failed one
    calls.clear()
    monkeypatch.setattr(pipeline_run, "resolve_stage", standins(calls, {}))
    result = pipeline_run.run(cfg, stages=SPECS)
    assert calls == ["second", "third"]
    assert (result.skipped, result.done) == (["first"], ["second", "third"])
    runs = _runs(mlflow_uri, mlflow_experiment)
    assert [r.info.status for r in runs["pipeline"]] == ["FAILED", "FINISHED"]
    assert [r.info.status for r in runs["second"]] == ["FAILED", "FINISHED"]
    assert runs["pipeline"][1].data.tags["cardforge.stages_skipped"] == "first"


def test_peak_memory_of_each_stage_is_logged_on_the_parent_and_the_stage_run(
        mlflow_uri, mlflow_experiment, tmp_path, monkeypatch):
    cfg = _cfg(mlflow_experiment, tmp_path / "out")
    monkeypatch.setattr(pipeline_run, "resolve_stage", standins([], {}, alloc_mib={"first": 400, "third": 0}))
    # this test process may already be large (earlier tests in it loaded models): the bounds below are above it
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    result = pipeline_run.run(cfg, stages=[SPECS[0], SPECS[2]])
    runs = _runs(mlflow_uri, mlflow_experiment)
    parent = runs["pipeline"][0].data.metrics
    for name in ("first", "third"):
        peak = parent[f"{name}.peak_rss_gib"]
        assert runs[name][0].data.metrics[f"{name}.peak_rss_gib"] == peak  # the stage's own run cites it too
        assert parent[f"{name}.peak_rss_self_gib"] <= peak and parent[f"{name}.seconds"] >= 0
        assert result.peak_rss_gib[name] == pytest.approx(peak, abs=1e-3)
        assert pipeline_run.load_record(cfg, name)["peak_rss_gib"] == pytest.approx(peak, abs=1e-3)
    # 400 MiB of ballast = 0.39 GiB above the interpreter
    assert rss_before + 0.39 - 0.05 <= parent["first.peak_rss_gib"] < rss_before + 0.39 + 2.0
    # the high-water mark is reset per stage: the next stage is not charged the first one's ballast
    assert parent["third.peak_rss_self_gib"] < parent["first.peak_rss_self_gib"] - 0.3


def test_ctrl_c_marks_the_stage_and_the_parent_killed(mlflow_uri, mlflow_experiment, tmp_path, monkeypatch):
    cfg = _cfg(mlflow_experiment, tmp_path / "out")
    monkeypatch.setattr(pipeline_run, "resolve_stage", standins([], {"first": KeyboardInterrupt()}))
    with pytest.raises(KeyboardInterrupt):
        pipeline_run.run(cfg, stages=SPECS)
    runs = _runs(mlflow_uri, mlflow_experiment)
    assert runs["pipeline"][0].info.status == "KILLED" and runs["first"][0].info.status == "KILLED"


SCRIPT = """
import sys, time
from pathlib import Path
from cardforge.core import tracking
from cardforge.core.cli import stage_main
from cardforge.pipeline import run as pipeline_run
from cardforge.pipeline.run import StageSpec

started = Path(sys.argv.pop(1))

def slow(cfg):
    with tracking.stage_run(cfg, "slow"):
        started.write_text("x")
        time.sleep(120)

pipeline_run.resolve_stage = lambda target: slow
stage_main("pipeline", lambda cfg: pipeline_run.run(cfg, stages=[StageSpec("slow", "standin:slow", 0, ("data",))]))
"""


def test_sigterm_marks_the_stage_and_the_parent_killed_and_exits_143(mlflow_uri, mlflow_experiment, tmp_path):
    script, started = tmp_path / "pipeline_sigterm.py", tmp_path / "started"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), str(started), f"logger.experiment_name={mlflow_experiment}",
                             f"paths.outputs={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri})
    try:
        deadline = time.time() + 120
        while not started.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the stand-in stage never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.strip().splitlines()[-1] == "cardforge pipeline: killed by SIGTERM; its MLflow runs are marked KILLED"
    runs = _runs(mlflow_uri, mlflow_experiment)
    assert runs["pipeline"][0].info.status == "KILLED" and runs["slow"][0].info.status == "KILLED"
    assert runs["pipeline"][0].data.tags["cardforge.failed_at"] == "slow"


def test_sigterm_handler_is_only_installed_where_sigterm_is_default(monkeypatch):
    seen = []
    prev = signal.signal(signal.SIGTERM, lambda *a: seen.append(a))
    try:
        with tracking.terminate_raises():
            os.kill(os.getpid(), signal.SIGTERM)  # someone else's handler stays in charge
            time.sleep(0.05)
        assert seen
    finally:
        signal.signal(signal.SIGTERM, prev)
    with pytest.raises(tracking.Killed):
        with tracking.terminate_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_plan_true_prints_the_plan_and_runs_nothing(mlflow_uri, mlflow_experiment, tmp_path, capsys):
    cfg = compose("pipeline", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={tmp_path / 'out'}",
                               "plan=true"])
    result = pipeline_run.run(cfg)
    out = capsys.readouterr().out
    assert out.startswith("pipeline plan for experiment=tiny (CPU):\n| stage | command | needs |")
    assert result.run_id == "" and not result.done and not (tmp_path / "out").exists()
    assert MlflowClient(mlflow_uri).get_experiment_by_name(mlflow_experiment) is None  # no MLflow run either
