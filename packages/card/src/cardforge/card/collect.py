"""Find one pipeline invocation in MLflow and gather what its stage runs recorded.

The card states nothing MLflow does not hold, so everything here is read from runs: params (the resolved
config each stage logged), metrics, tags and a few artifacts. A stage the pipeline skipped as unchanged has
no child under this parent; its `<outputs>/.pipeline/<stage>.json` record names the earlier run that made
the result still in use, and that run is taken instead (marked `reused`).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.core import tracking
from cardforge.core.artifacts import DataOutputs, EvalOutputs, QuantOutputs
from cardforge.core.errors import UserError

STAGES = ("data", "train", "merge", "mtp", "quant", "eval")
# artifacts the card reads or shows, per stage (artifact path in the run)
ARTIFACTS = {
    "data": [DataOutputs.MANIFEST_ARTIFACT],
    "train": ["loss_curve.png"],
    "mtp": ["mtp/mtp_bench.png"],
    "quant": [QuantOutputs.RESULTS_ARTIFACT],
    "eval": [EvalOutputs.SUMMARY_ARTIFACT, EvalOutputs.BENCH_PLOT_ARTIFACT],
}
SUITE_METRIC = re.compile(r"^(?P<label>distill|base)\.(?P<suite>[^.]+)\.(?P<stat>[^.]+)$")
DELTA_METRIC = re.compile(r"^delta\.(?P<suite>[^.]+)\.(?P<stat>[^.]+)$")
# tier names may hold dots (Qwen3.6-...), prompt types and stats do not
MTP_METRIC = re.compile(r"^mtp\.(?P<tier>.+)\.(?P<ptype>[^.]+)\.n(?P<n>\d+)\."
                        r"(?P<stat>tok_s_median|speedup|accept_rate|mean_accept_len)$")
QUANT_METRIC = re.compile(r"^(?P<key>.+)\.(?P<stat>GB|GiB|kld_mean|kld_p99|ppl|same_top_p|seconds)$")


@dataclass
class StageRun:
    stage: str
    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    reused: bool = False  # skipped as unchanged in this invocation: an earlier invocation's run
    files: dict[str, Path] = field(default_factory=dict)  # artifact path -> local copy

    @property
    def ref(self) -> str:
        return f"[run {self.run_id[:8]}]"

    @classmethod
    def from_run(cls, run: Any, reused: bool = False) -> "StageRun":
        tags = dict(run.data.tags)
        return cls(stage=tags.get("cardforge.stage", "?"), run_id=run.info.run_id,
                   name=run.info.run_name or "", status=run.info.status, start_time=int(run.info.start_time or 0),
                   params=dict(run.data.params), metrics=dict(run.data.metrics), tags=tags, reused=reused)


@dataclass
class Collected:
    parent: StageRun
    stages: dict[str, StageRun]  # stage -> run; a stage absent here was not measured

    def get(self, stage: str) -> StageRun | None:
        return self.stages.get(stage)


def _client(cfg: DictConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking.tracking_uri(cfg))


def _pipeline_run(client, run_id: str, key: str = "card.parent_run_id"):
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"{key}={run_id}: no such run in {client.tracking_uri}") from None
    if run.data.tags.get("cardforge.stage") != "pipeline":
        raise UserError(f"{key}={run_id} is a '{run.data.tags.get('cardforge.stage')}' run, not a "
                        "pipeline run: give the id of the pipeline parent run")
    return run


def find_parent(cfg: DictConfig, client=None, *, given: str | None = None, key: str = "card.parent_run_id"):
    """`given` (the value of config key `key`), else card.parent_run_id, else the pipeline run this process is
    inside (this invocation, still RUNNING), else the latest FINISHED one of `experiment`: a run left RUNNING
    by a killed process, or ended FAILED / KILLED, is never picked by default (give its id to compile it)."""
    import mlflow

    client = client or _client(cfg)
    if given:
        return _pipeline_run(client, str(given), key)
    given = OmegaConf.select(cfg, "card.parent_run_id")
    if given:
        return _pipeline_run(client, str(given))
    active = mlflow.active_run()
    for rid in (active.info.run_id if active else None, os.environ.get(tracking.PARENT_ENV)):
        if rid and client.get_run(rid).data.tags.get("cardforge.stage") == "pipeline":
            return client.get_run(rid)
    exp_name = str(cfg.logger.experiment_name)
    exp = client.get_experiment_by_name(exp_name)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=50,
        filter_string=f"tags.`cardforge.stage` = 'pipeline' and tags.`cardforge.experiment` = '{cfg.experiment}'")
    for run in runs:
        if run.info.status == "FINISHED":
            return run
    others = ", ".join(f"{r.info.run_id[:8]} {r.info.status}" for r in runs[:3])
    raise UserError(f"no finished pipeline run of experiment={cfg.experiment} in MLflow experiment '{exp_name}' "
                    f"({client.tracking_uri}){f' (latest: {others})' if others else ''}: run `make reproduce "
                    f"EXP={cfg.experiment}` first, or set {key}=RUN_ID")


def _record_run(cfg: DictConfig, client, stage: str, parent):
    """The earlier run a skipped stage's pipeline record points to, if it is one this parent could reuse."""
    from mlflow.exceptions import MlflowException

    from cardforge.core.pipeline_record import load_record

    rec = load_record(cfg, stage)
    if not rec or not rec.get("run_id"):
        return None
    try:
        run = client.get_run(rec["run_id"])
    except MlflowException:
        return None
    tags = run.data.tags
    # a record rewritten by a later invocation is not what this parent used
    if (tags.get("cardforge.stage") != stage or run.info.status != "FINISHED"
            or run.info.experiment_id != parent.info.experiment_id
            or tags.get("cardforge.experiment") != parent.data.tags.get("cardforge.experiment")
            or (run.info.start_time or 0) > (parent.info.start_time or 0)):
        return None
    return run


def stage_runs(cfg: DictConfig, parent, client=None) -> dict[str, StageRun]:
    client = client or _client(cfg)
    children = client.search_runs([parent.info.experiment_id], order_by=["attributes.start_time DESC"],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    out: dict[str, StageRun] = {}
    for run in children:  # newest first: the latest finished run of a stage wins
        stage = run.data.tags.get("cardforge.stage")
        if stage in STAGES and stage not in out and run.info.status == "FINISHED":
            out[stage] = StageRun.from_run(run)
    for stage in STAGES:
        if stage not in out and (run := _record_run(cfg, client, stage, parent)) is not None:
            out[stage] = StageRun.from_run(run, reused=True)
    return dict(sorted(out.items(), key=lambda kv: STAGES.index(kv[0])))


def fetch_artifacts(cfg: DictConfig, runs: dict[str, StageRun], dst: Path, client=None) -> None:
    """Download the artifacts the card reads into dst/<run id>/. One the run did not log (e.g. no MTP bench) is
    absent; one it logged that cannot be downloaded stops the card (never silently dropped)."""
    from mlflow.artifacts import download_artifacts

    uri = tracking.tracking_uri(cfg)
    client = client or _client(cfg)
    for stage, run in runs.items():
        for path in ARTIFACTS.get(stage, []):
            folder = path.rpartition("/")[0] or None
            try:
                logged = {a.path for a in client.list_artifacts(run.run_id, folder)}
            except Exception as e:  # noqa: BLE001 - the artifact store itself is unreachable
                raise UserError(f"cannot list the artifacts of the {stage} run {run.run_id[:8]} ({e}); the card "
                                "reads them, so it is not compiled without them") from None
            if path not in logged:
                continue
            target = dst / run.run_id
            target.mkdir(parents=True, exist_ok=True)
            try:
                local = download_artifacts(run_id=run.run_id, artifact_path=path, dst_path=str(target),
                                           tracking_uri=uri)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"the {stage} run {run.run_id[:8]} logged {path} but it could not be downloaded "
                                f"({type(e).__name__}: {e}); fix the artifact store and compile the card again") from None
            if not Path(local).is_file():
                raise UserError(f"the {stage} run {run.run_id[:8]} logged {path} but the download is not a file")
            run.files[path] = Path(local)


def collect(cfg: DictConfig, work_dir: Path) -> Collected:
    client = _client(cfg)
    parent = find_parent(cfg, client)
    runs = stage_runs(cfg, parent, client)
    shutil.rmtree(work_dir, ignore_errors=True)
    fetch_artifacts(cfg, runs, work_dir, client)
    return Collected(StageRun.from_run(parent), runs)


# --- metric views the tables are built from (names as the stages log them) ---


TIER_PREFIX = re.compile(r"^tier\.(?P<tier>.+?)\.(?P<rest>(?:distill|base|delta)\..+)$")


def tier_suite_stats(run: StageRun) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """eval.tiers: tier -> suite_stats of the metrics the eval stage logged as `tier.<TIER>.<label>.<suite>.*`."""
    keyed: dict[str, dict[str, float]] = {}
    for key, val in run.metrics.items():
        if m := TIER_PREFIX.match(key):
            keyed.setdefault(m["tier"], {})[m["rest"]] = val
    return {t: s for t, ms in sorted(keyed.items()) if (s := suite_stats(run, ms))}


def suite_stats(run: StageRun, metrics: dict[str, float] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """suite -> label (distill | base | delta) -> stat -> value (of `metrics`, default the run's own)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, val in (run.metrics if metrics is None else metrics).items():
        if m := SUITE_METRIC.match(key):
            out.setdefault(m["suite"], {}).setdefault(m["label"], {})[m["stat"]] = val
        elif m := DELTA_METRIC.match(key):
            out.setdefault(m["suite"], {}).setdefault("delta", {})[m["stat"]] = val
    return {s: v for s, v in out.items() if any("accuracy" in x for x in v.values())}


def mtp_rows(run: StageRun) -> list[dict[str, Any]]:
    rows: dict[tuple, dict[str, Any]] = {}
    for key, val in run.metrics.items():
        if m := MTP_METRIC.match(key):
            row = rows.setdefault((m["tier"], m["ptype"], int(m["n"])),
                                  {"tier": m["tier"], "prompt_type": m["ptype"], "n_max": int(m["n"])})
            row[m["stat"]] = val
    return [rows[k] for k in sorted(rows)]


def quant_files(run: StageRun) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, val in run.metrics.items():
        if (m := QUANT_METRIC.match(key)) and not key.startswith("quant."):
            out.setdefault(m["key"], {})[m["stat"]] = val
    return out
