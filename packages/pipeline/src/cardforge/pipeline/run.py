"""Chain the stages under one MLflow parent run; skip what is already done; stop clearly where a stage is missing.

A stage is skipped when its record (`<outputs>/.pipeline/<stage>.json`) holds the same key: the hash of the
config sections it reads, the fingerprints of the stages before it and the version of the code that runs it
(fingerprints.code_version: its packages' source files + the llama.cpp release), AND the output files the
record lists still hold the content it recorded (fingerprints.changed_outputs). So changing `lora.r` reruns
train and everything after it, not data; a fix in cardforge.quant reruns quant and what follows; an adapter
rewritten by a standalone `python -m cardforge.train` reruns train, with one line saying which file changed.
`force=[train]` (or `force=[all]`, `make reproduce FORCE=1`) reruns anyway. Each stage's run is tagged
`cardforge.code_version` (at start) and `cardforge.outputs_sha256` (its outputs' content, at the end). A failing stage leaves no record and marks its run and the parent FAILED (KILLED on Ctrl-C or
SIGTERM); the next invocation resumes there. `plan=true` prints the plan (plan.py) and runs nothing.

Each stage's peak resident memory (this process and its children, memory.py) goes to the parent run as
`<stage>.peak_rss_gib` (and to the stage's own run), with `<stage>.seconds`, and into its record.

Stages are looked up lazily (`module:function`) so a stage that is not built yet stops the chain there
with what was done so far, instead of failing at import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import mlflow
from omegaconf import DictConfig, OmegaConf

from cardforge.core import tracking
from cardforge.core.artifacts import Outputs
from cardforge.core.cli import StageNotImplemented
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_json
from cardforge.core.pipeline_record import load_record, record_path
from cardforge.pipeline import fingerprints, plan
from cardforge.pipeline.memory import Peak, PeakRss

CODE_ENV = "CARDFORGE_CODE_VERSION"  # read by tracking.run_tags: the stage's run is tagged with it


@dataclass(frozen=True)
class StageSpec:
    name: str
    target: str  # "module:function", called with the full config
    issue: int  # the issue that builds it (for the message when it is missing)
    sections: tuple[str, ...]  # config sections whose values decide what the stage computes
    always: bool = False  # never skipped: the card cites this invocation's runs
    enabled_by: str | None = None  # a boolean config key; false -> the stage is left out of this chain
    packages: tuple[str, ...] = ("cardforge.core",)  # the code that runs it: part of its cache key


TRAIN_CODE = ("cardforge.core", "cardforge.agent", "cardforge.train")  # agent: the ReAct wire it trains on
STAGES: list[StageSpec] = [
    StageSpec("models", "cardforge.core.models.stage:run", 2, ("model", "teacher")),
    StageSpec("data", "cardforge.data.stage:run", 3, ("model", "teacher", "data"),
              packages=("cardforge.core", "cardforge.agent", "cardforge.data")),
    StageSpec("train", "cardforge.train.stage:run", 4, ("model", "data", "lora", "trainer"), packages=TRAIN_CODE),
    StageSpec("merge", "cardforge.train.merge.stage:run", 4, ("model",), packages=TRAIN_CODE),
    StageSpec("mtp", "cardforge.train.mtp.stage:run", 11, ("model", "mtp"), enabled_by="mtp.enabled",
              packages=(*TRAIN_CODE, "cardforge.eval", "cardforge.serve", "cardforge.quant")),
    StageSpec("quant", "cardforge.quant.stage:run", 5, ("model", "quant"),
              packages=("cardforge.core", "cardforge.quant", "cardforge.serve")),
    StageSpec("eval", "cardforge.eval.stage:run", 7, ("model", "serve", "eval"),
              packages=("cardforge.core", "cardforge.agent", "cardforge.eval", "cardforge.serve", "cardforge.quant")),
    StageSpec("card", "cardforge.card.stage:run", 9, ("card",), always=True,
              packages=("cardforge.core", "cardforge.card", "cardforge.serve")),
]


@dataclass
class PipelineResult:
    run_id: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped_at: str | None = None
    reason: str | None = None
    # each stage's result (a dataclass) as its record holds it, plain JSON values (jsonable), whether the stage
    # ran in this invocation or was skipped as unchanged
    results: dict[str, Any] = field(default_factory=dict)
    peak_rss_gib: dict[str, float] = field(default_factory=dict)  # stages run in this invocation
    # the store the parent run was opened in, resolved once before any stage runs: the bookkeeping after a stage
    # (metrics, tags) goes there even where the stage pointed the process's tracking URI (and $MLFLOW_TRACKING_URI,
    # which mlflow.set_tracking_uri also sets) at another store
    tracking_uri: str = ""


def resolve_stage(target: str) -> Callable[[DictConfig], Any] | None:
    module, _, fn = target.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):  # the stage module itself is missing, not a dependency
            return None
        raise
    except AttributeError:
        return None


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Enum):
        return obj.value
    return str(obj)  # Path and anything else a stage returns


def jsonable(result: Any) -> Any:
    """A stage's result (dataclass, paths, enums) as plain JSON values, for its record and fingerprint."""
    return json.loads(json.dumps(result, default=_plain))


def fingerprint(result: Any) -> str:
    return hashlib.sha256(json.dumps(jsonable(result), sort_keys=True).encode()).hexdigest()[:16]


def stage_key(cfg: DictConfig, spec: StageSpec, upstream: list[str], code: str | None = None) -> str:
    code = code or fingerprints.code_version(spec.packages)
    blob = json.dumps({"config": tracking.config_hash(cfg, spec.sections), "upstream": upstream, "code": code})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tag_run(stage: str, run_id: str | None, tags: dict[str, str], uri: str) -> None:
    if run_id is None:
        return
    try:
        client = mlflow.MlflowClient(uri)
        for key, val in tags.items():
            client.set_tag(run_id, key, val)
    except Exception as e:  # noqa: BLE001 - bookkeeping must not fail a finished stage
        print(f"[pipeline] {stage}: could not tag run {run_id[:8]}: {e}", file=sys.stderr)


def _log_stage_metrics(stage: str, child_id: str | None, parent_id: str, metrics: dict[str, float], uri: str
                       ) -> None:
    """On the parent (a results table cites one run) and on the stage's own run, in the store `uri`; never fails
    the stage."""
    try:
        client = mlflow.MlflowClient(uri)
        for rid in {parent_id, child_id} - {None}:
            for key, val in metrics.items():
                client.log_metric(rid, key, val)
    except Exception as e:  # noqa: BLE001 - bookkeeping must not turn a finished stage into a failed one
        print(f"[pipeline] {stage}: could not log {sorted(metrics)}: {e}", file=sys.stderr)


def run(cfg: DictConfig, stages: list[StageSpec] | None = None) -> PipelineResult:
    """The chain: the stages up to `until`, the plan only (`plan=true`), the machine check, then under one parent
    run each stage in turn: left out (off), missing (the chain stops), unchanged (its record reused) or run and
    recorded."""
    stages = selected_stages(cfg, STAGES if stages is None else stages)
    if cfg.plan:
        print(plan.report(cfg))
        return PipelineResult(run_id="", stopped_at=None, reason="plan=true: nothing was run")
    check_machine(cfg)
    force = set(cfg.force or [])
    uri = tracking.tracking_uri(cfg)  # what pipeline_run opens the parent in (before a stage can move it)
    with tracking.pipeline_run(cfg) as parent:
        result = PipelineResult(run_id=parent.info.run_id, tracking_uri=uri)
        upstream: list[str] = []  # the fingerprints of the stages before: part of each stage's key
        for spec in stages:
            if spec.enabled_by and not OmegaConf.select(cfg, spec.enabled_by):
                print(f"[pipeline] {spec.name}: off ({spec.enabled_by}=false)", file=sys.stderr)
                upstream.append(f"{spec.name}:off")  # switching it on or off changes what comes after
                continue
            fn = resolve_stage(spec.target)
            if fn is None:
                result.stopped_at = spec.name
                result.reason = f"stage '{spec.name}' is not implemented yet (issue #{spec.issue})"
                break
            code = fingerprints.code_version(spec.packages)
            key = stage_key(cfg, spec, upstream, code)
            if (rec := reusable_record(cfg, spec, key, code, upstream, force)) is not None:
                print(f"[pipeline] {spec.name}: unchanged (run {rec['run_id'][:8]}), skipped", file=sys.stderr)
                result.skipped.append(spec.name)
                result.results[spec.name] = rec.get("result")
                upstream.append(rec["fingerprint"])
                continue
            ran = run_stage(cfg, spec, fn, code, result)
            if ran is None:  # the stage said it is not implemented (StageNotImplemented): the chain stops there
                break
            upstream.append(record_stage(cfg, spec, ran, key, code, upstream, result))
        tag_parent(result)
    return result


def selected_stages(cfg: DictConfig, stages: list[StageSpec]) -> list[StageSpec]:
    """The stages up to `until` (all when it is null)."""
    names = [s.name for s in stages]
    until = cfg.until
    if until is not None and until not in names:
        raise UserError(f"until={until}: no such stage; choose one of: {', '.join(names)}")
    return stages if until is None else stages[: names.index(until) + 1]


def check_machine(cfg: DictConfig) -> None:
    """A GPU experiment stops before anything runs when this machine lacks what it needs (plan.problems)."""
    if plan.needs_gpu(cfg) and (missing := plan.problems(cfg)):
        print(f"[pipeline] plan for experiment={cfg.experiment}:\n{plan.render(cfg)}", file=sys.stderr)
        raise UserError(f"experiment={cfg.experiment} cannot run on this machine: " + "; ".join(missing)
                        + ". Everything else was validated (config, targets, llama.cpp); nothing was run.")


def reusable_record(cfg: DictConfig, spec: StageSpec, key: str, code: str, upstream: list[str],
                    force: set[str]) -> dict[str, Any] | None:
    """The stage's record when the stage can be skipped: same key, outputs still as recorded, not forced and not
    an `always` stage. Otherwise None, saying why a recorded stage reruns."""
    rec = load_record(cfg, spec.name)
    if rec and rec.get("key") == key and not spec.always and not ({spec.name, "all"} & force):
        drift = fingerprints.changed_outputs(rec.get("outputs") or {}, Outputs(cfg).root)
        if not drift:
            return rec
        more = f" and {len(drift) - 1} more" if len(drift) > 1 else ""
        print(f"[pipeline] {spec.name}: outputs no longer what run {rec['run_id'][:8]} recorded "
              f"({drift[0]}{more}; written by another run?), rerunning", file=sys.stderr)
    elif rec and rec.get("key") != key and rec.get("code") not in (None, code) and not spec.always:
        print(f"[pipeline] {spec.name}: code changed since run {rec['run_id'][:8]} "
              f"({rec['code']} -> {code}), rerunning", file=sys.stderr)
    elif rec and rec.get("key") != key and rec.get("upstream") not in (None, upstream) and not spec.always:
        print(f"[pipeline] {spec.name}: an earlier stage's result changed since run {rec['run_id'][:8]}, "
              "rerunning", file=sys.stderr)
    return None


@dataclass
class StageRun:
    """One stage run in this invocation: what it returned, its MLflow run (None if it opened none), its cost."""
    out: Any
    child_id: str | None
    seconds: float
    peak: Peak


def run_stage(cfg: DictConfig, spec: StageSpec, fn: Callable[[DictConfig], Any], code: str,
              result: PipelineResult) -> StageRun | None:
    """Run the stage with its code version in the environment (its run's tag), measuring time and peak memory
    (logged on the parent and the stage's run). None when the stage is not implemented; a failure tags the parent
    with where the chain broke and is raised."""
    print(f"[pipeline] {spec.name} ...", file=sys.stderr)
    started = time.time()
    before = tracking.last_stage_run_id(spec.name)
    mem = PeakRss()
    prev_code = os.environ.get(CODE_ENV)
    os.environ[CODE_ENV] = code
    try:
        with mem:
            out = fn(cfg)
    except StageNotImplemented as e:
        result.stopped_at, result.reason = spec.name, e.message
        return None
    except BaseException as e:
        # the stage's own run is FAILED/KILLED already (stage_run); say where the chain broke
        failed = tracking.last_stage_run_id(spec.name)
        failed = failed if failed != before else None
        if mem.peak is not None:
            _log_stage_metrics(spec.name, failed, result.run_id, mem.peak.metrics(spec.name), result.tracking_uri)
        tag_parent(result, **{"cardforge.failed_at": spec.name,
                              "cardforge.failure": f"{type(e).__name__}: {e}"[:4000]})
        raise
    finally:
        if prev_code is None:
            os.environ.pop(CODE_ENV, None)
        else:
            os.environ[CODE_ENV] = prev_code
    seconds = round(time.time() - started, 1)
    child_id = tracking.last_stage_run_id(spec.name)
    child_id = child_id if child_id != before else None
    peak = mem.peak
    _log_stage_metrics(spec.name, child_id, result.run_id,
                       {**peak.metrics(spec.name), f"{spec.name}.seconds": seconds}, result.tracking_uri)
    result.peak_rss_gib[spec.name] = round(peak.gib, 4)
    print(f"[pipeline] {spec.name}: done in {seconds:.0f} s, peak RSS {peak.gib:.2f} GiB", file=sys.stderr)
    return StageRun(out, child_id, seconds, peak)


def record_stage(cfg: DictConfig, spec: StageSpec, ran: StageRun, key: str, code: str, upstream: list[str],
                 result: PipelineResult) -> str:
    """Tag the stage's run with its code and outputs' digest, write its record (what the next invocation's skip
    check reads) and add it to the result. Returns the stage's fingerprint."""
    fp, plain = fingerprint(ran.out), jsonable(ran.out)
    files = fingerprints.hash_outputs(plain, Outputs(cfg).root)
    _tag_run(spec.name, ran.child_id, {"cardforge.code_version": code,
                                       "cardforge.outputs_sha256": fingerprints.outputs_digest(files)},
             result.tracking_uri)
    atomic_write_json(record_path(cfg, spec.name), {
        "key": key, "fingerprint": fp, "result": plain, "seconds": ran.seconds,
        "peak_rss_gib": round(ran.peak.gib, 4), "run_id": ran.child_id or result.run_id,
        "code": code, "upstream": list(upstream), "outputs": files,
    })
    result.results[spec.name] = plain
    result.done.append(spec.name)
    return fp


def tag_parent(result: PipelineResult, **extra: str) -> None:
    """The parent run's tags: which stages ran, were skipped, where the chain stopped (and failed); in the parent's
    store (by id, not the fluent API: that follows the process's tracking URI, which a stage may have moved)."""
    client = mlflow.MlflowClient(result.tracking_uri)
    for key, val in {"cardforge.stages_done": ",".join(result.done),
                     "cardforge.stages_skipped": ",".join(result.skipped),
                     "cardforge.stopped_at": result.stopped_at or "", **extra}.items():
        client.set_tag(result.run_id, key, val)
