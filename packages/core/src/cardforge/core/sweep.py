"""Per-job report of a Hydra multirun, whatever launcher ran the jobs (basic, joblib, submitit, Ray).

A sweep's jobs may run in other processes or on other hosts (submitit on SLURM: a shared filesystem), so each
job writes its own record, `<sweep dir>/jobs/<num>.json`, when it starts (RUNNING) and when it ends (COMPLETED or
FAILED, with the error's first line). The launching process then reads them all (`finish`), prints one line per job,
writes `<sweep dir>/sweep_summary.json`, logs it on the sweep's MLflow parent run and ends that run FINISHED, or
FAILED when any job failed or left no end record (a job killed by the scheduler, kill -9, out of memory).

Hydra's sweeper raises the first failed job's error only after every job of the batch has returned, so the other
jobs finish; `cardforge.core.cli.stage_main` calls `finish` on that path too (Hydra skips `on_multirun_end` there).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

JOBS_DIR = "jobs"
SUMMARY_FILE = "sweep_summary.json"
_open: dict[str, Any] = {}  # the sweep this process launched: {"dir": Path, "uri": str}


def _job_record(config: DictConfig, status: str, error: BaseException | None = None) -> dict[str, Any]:
    hc = config.hydra
    rec: dict[str, Any] = {
        "num": int(hc.job.num), "status": status, "overrides": list(hc.overrides.task),
        "output_dir": str(OmegaConf.select(config, "hydra.runtime.output_dir", default="") or ""),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
    }
    if error is not None:
        lines = str(error).strip().splitlines()
        rec["error"] = f"{type(error).__name__}: {lines[0] if lines else ''}"[:2000]
    return rec


def _multirun(config: DictConfig) -> bool:
    """A multirun job, on its global rank 0 (a SLURM job of N tasks runs the job function once per task)."""
    rank = next((os.environ[v] for v in ("RANK", "SLURM_PROCID") if os.environ.get(v, "").isdigit()), "0")
    return "MULTIRUN" in str(OmegaConf.select(config, "hydra.mode", default="")) and rank == "0"


def _write_record(config: DictConfig, rec: dict[str, Any]) -> None:
    from cardforge.core.io import atomic_write_json

    atomic_write_json(Path(str(config.hydra.sweep.dir)) / JOBS_DIR / f"{rec['num']}.json", rec)


def read_records(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job record of the sweep, by job number (a record that cannot be read counts as unknown)."""
    out = []
    for f in sorted((Path(sweep_dir) / JOBS_DIR).glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError) as e:
            out.append({"num": f.stem, "status": "UNKNOWN", "overrides": [], "error": f"unreadable record: {e}"})
    return out


def summarize(records: list[dict[str, Any]], expected: int | None = None) -> dict[str, Any]:
    """Counts per status; a job still RUNNING after the launcher returned never ended (killed): failed.
    `expected`: the number of jobs launched; those without any record never started (counted as missing)."""
    jobs = [dict(r, status="FAILED", error=r.get("error") or "the job never recorded its end (killed?)")
            if r.get("status") == "RUNNING" else r for r in records]
    counts: dict[str, int] = {}
    for r in jobs:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    missing = max(0, (expected or 0) - len(jobs))
    ok = counts.get("COMPLETED", 0)
    return {"jobs": jobs, "counts": counts, "missing": missing, "failed": len(jobs) - ok + missing,
            "completed": ok}


def format_summary(summary: dict[str, Any], sweep_dir: str | Path, parent: str | None) -> str:
    n = len(summary["jobs"]) + summary["missing"]
    head = (f"[sweep] {n} jobs: {summary['completed']} completed, {summary['failed']} failed"
            f"{' (' + str(summary['missing']) + ' never started)' if summary['missing'] else ''}; "
            f"sweep dir {sweep_dir}" + (f"; MLflow parent run {parent}" if parent else ""))
    lines = [head]
    for r in summary["jobs"]:
        what = " ".join(r.get("overrides") or []) or "(no overrides)"
        lines.append(f"[sweep]   #{r['num']} {r['status']:<9} {what}" + (f": {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def finish(expected: int | None = None) -> dict[str, Any] | None:
    """Report the sweep this process launched (no-op otherwise, and the second time): one line per job on stderr,
    sweep_summary.json, and the MLflow parent run ended FINISHED (every job completed) or FAILED."""
    if not _open:
        return None
    sweep_dir, uri = _open.pop("dir"), _open.pop("uri", None)
    from cardforge.core.io import atomic_write_json
    from cardforge.core.tracking import SWEEP_RUN_FILE

    summary = summarize(read_records(sweep_dir), expected)
    f = sweep_dir / SWEEP_RUN_FILE
    parent = f.read_text().strip() if f.is_file() else None
    atomic_write_json(sweep_dir / SUMMARY_FILE, {**summary, "mlflow_parent_run_id": parent})
    print(format_summary(summary, sweep_dir, parent), file=sys.stderr, flush=True)
    if parent:
        import mlflow

        client = mlflow.MlflowClient(uri)
        try:
            client.set_tag(parent, "cardforge.sweep.jobs", str(len(summary["jobs"]) + summary["missing"]))
            client.set_tag(parent, "cardforge.sweep.failed_jobs", str(summary["failed"]))
            client.log_artifact(parent, str(sweep_dir / SUMMARY_FILE))
        finally:
            client.set_terminated(parent, "FAILED" if summary["failed"] else "FINISHED")
    return summary


class SweepReportCallback(Callback):
    """Hydra callback (conf/base.yaml): per-job records in the sweep dir, the report when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cardforge.core.tracking import tracking_uri

        _open.update(dir=Path(str(config.hydra.sweep.dir)), uri=tracking_uri(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _multirun(config):
            _write_record(config, _job_record(config, "RUNNING"))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _multirun(config):
            return
        status = getattr(job_return.status, "name", str(job_return.status))
        err = job_return._return_value if status == "FAILED" else None
        _write_record(config, _job_record(config, status, err if isinstance(err, BaseException) else None))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish()
