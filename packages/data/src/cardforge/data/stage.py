"""Data stage: teacher ReAct trajectories on verifiable tasks -> the accepted distillation set.

Run as: python -m cardforge.data [hydra overrides]     (make data EXP=tiny ARGS="data=react_execute")

Reads  the tasks of data.sources (cardforge.agent.tasks); the teacher of `teacher=` (an embedded one is
       served by llama-server for the stage's duration).
Writes <outputs>/data/trajectories.jsonl  the ACCEPTED samples (what train and quant read)
       <outputs>/data/rejections.jsonl    every rejected sample, verdict.reason = "<reason>: <detail>"
       <outputs>/data/manifest.json       sha256, counts, rejections by reason, student-token statistics
MLflow: the stage's nested run: counts and token metrics, the three files and a markdown table.

Resumable: samples are appended one whole line at a time (cardforge.core.chat.append_jsonl) and a re-run
skips every sample id already in either file, so a kill -9 loses at most the samples in flight and never
duplicates one. A changed teacher/task config starts over (the old files are kept as *.stale-<key>).
Fewer than data.min_accepted accepted samples stops the stage with an error (never train on nothing).
Budget: every teacher answer is priced (teacher.price) into <outputs>/data/spend.jsonl; once data.budget
(tokens or cost, all runs together) is reached no new sample starts (those in flight finish), the stage
ends cleanly with what it has, and a re-run with a larger budget resumes. Spend: MLflow data.spend.*
metrics and the manifest's `spend` field.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.core import tracking
from cardforge.core.artifacts import DataOutputs, Outputs
from cardforge.core.chat import append_jsonl, completed_task_ids, read_jsonl, write_jsonl
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_json, atomic_write_text

# keys that change how many samples are made or kept, not what one sample is: a re-run with other values
# resumes instead of starting over
RESUME_NEUTRAL = ("num_samples", "samples_per_task", "retries", "retry_errors", "min_accepted", "max_seq_len",
                  "judge", "train_format", "mask_tool_results", "budget")
TRANSIENT = ("teacher_error", "simulator_error")  # what data.retry_errors=true asks again for


@dataclass
class DataResult:
    trajectories: str
    rejections: str
    manifest: dict[str, Any]
    run_id: str | None
    wall_s: float


def out_dir(cfg: DictConfig) -> Path:
    return Outputs(cfg).data.dir


def resume_key(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True, enum_to_str=True)
    for k in RESUME_NEUTRAL:
        data.pop(k, None)
    data.pop("max_retries", None)  # how often a failed request is asked again, not what a sample is
    for k in ("concurrency", "timeout_s", "idle_timeout_s", "base_url", "api_key_env", "ctx_size", "threads",
              "price"):  # transport and accounting
        teacher.pop(k, None)
    return tracking.config_hash({"data": data, "teacher": teacher})


def _prepare_files(cfg: DictConfig, out: Path) -> tuple[Path, Path]:
    files = DataOutputs(out)
    accepted, rejected, state = files.trajectories, files.rejections, out / "state.json"
    key = resume_key(cfg)
    prev = json.loads(state.read_text()) if state.exists() else {}
    old = prev.get("resume_key")
    if old and old != key:
        for p in (accepted, rejected):
            if p.exists():
                p.rename(p.with_name(f"{p.name}.stale-{old}"))
        _log(f"teacher/data config changed ({old} -> {key}): starting over, old files kept as *.stale-{old}")
    # sample id -> how many later runs asked again for it after a teacher/simulator error (capped)
    asked = dict(prev.get("asked_again", {})) if old == key else {}
    cap = int(cfg.data.max_retries)
    if cfg.data.retry_errors and rejected.exists():
        keep, again = [], []
        for t in read_jsonl(rejected)[0]:
            if t.extra.get("reason") in TRANSIENT and asked.get(t.task_id, 0) < cap:
                asked[t.task_id] = asked.get(t.task_id, 0) + 1
                again.append(t.task_id)
            else:
                keep.append(t)
        if again:
            write_jsonl(rejected, keep)
            _log(f"asking again for {len(again)} sample(s) that failed last time because the teacher/simulator did "
                 f"not answer (data.retry_errors=true; each at most data.max_retries={cap} times)")
    atomic_write_json(state, {"resume_key": key, "asked_again": asked})
    return accepted, rejected


def outage_note(cfg: DictConfig, rej: list, out: Path) -> str:
    """What happened to samples the teacher/simulator did not answer and what to do: one line, or ''."""
    failed = [t for t in rej if t.extra.get("reason") in TRANSIENT]
    if not failed:
        return ""
    state = out / "state.json"
    asked = json.loads(state.read_text()).get("asked_again", {}) if state.exists() else {}
    cap = int(cfg.data.max_retries)
    spent = sum(asked.get(t.task_id, 0) >= cap for t in failed)
    first = " ".join(str(failed[0].verdict.reason).split())[:120]
    if cfg.data.retry_errors and spent < len(failed):
        then = (f"the next run asks again for {len(failed) - spent} of them (data.max_retries={cap} runs each"
                + (f"; {spent} have used all their tries" if spent else "") + ")")
    elif cfg.data.retry_errors:
        then = f"all have been asked again data.max_retries={cap} times; raise data.max_retries to ask again"
    else:
        then = "data.retry_errors=false keeps them rejected; set data.retry_errors=true to ask again"
    return (f"{len(failed)} sample(s) failed because the teacher/simulator did not answer (e.g. {first}); {then}. "
            f"Check that the teacher answers (teacher.base_url, the API key in ${cfg.teacher.api_key_env}) or raise "
            "teacher.timeout_s / data.retries, then rerun the data stage")


def _log(msg: str) -> None:
    print(f"[cardforge.data] {msg}", file=sys.stderr, flush=True)


async def _generate(todo, teacher, opts, accepted: Path, rejected: Path, simulator, budget=None) -> dict:
    """Run the samples; returns {"stopped_by_budget": why or None, "not_started": n} (budget: (tokens, cost))."""
    from cardforge.agent.react import run_sample
    from cardforge.agent.client import new_session

    from cardforge.core.progress import Progress

    sem = asyncio.Semaphore(teacher.concurrency)
    counts = {"accepted": 0, "rejected": 0}
    bar = Progress(len(todo), "cardforge.data", "samples", every_s=0)
    stop: dict = {"stopped_by_budget": None, "not_started": 0}
    async with new_session(teacher.concurrency) as session:
        sim_session = new_session(simulator.concurrency) if simulator else None

        async def one(task, k):
            async with sem:
                why = teacher.spend.reached(*budget) if budget and teacher.spend else None
                if why:  # not started, not recorded: a re-run with a larger budget asks it
                    if not stop["stopped_by_budget"]:
                        _log(f"budget reached ({why}): no new samples start; raise data.budget and re-run to "
                             "resume")
                    stop["stopped_by_budget"] = why
                    stop["not_started"] += 1
                    return
                traj = await run_sample(task, k, teacher, session, opts, simulator, sim_session)
            ok = traj.verdict.status == "accepted"
            append_jsonl(accepted if ok else rejected, traj)  # the loop is the only writer: whole lines
            counts["accepted" if ok else "rejected"] += 1
            bar.step(note=f"{traj.task_id} {'accepted' if ok else 'rejected (' + traj.verdict.reason[:80] + ')'}")

        try:
            await asyncio.gather(*(one(t, k) for t, k in todo))
        finally:
            if sim_session:
                await sim_session.close()
    return stop


def _student_tokenizer(cfg: DictConfig):
    from cardforge.core.chat import load_tokenizer
    from cardforge.core.io import check_model_path

    if cfg.model.embedded:
        return load_tokenizer(str(cfg.model.name))
    # a folder that does not exist is one line naming model.path, not the hub's "Repo id must be in the form"
    return load_tokenizer(str(check_model_path(str(cfg.model.path))))


def budget_of(cfg: DictConfig) -> tuple:
    """(data.budget.tokens, data.budget.cost); a cost budget needs the teacher's price."""
    budget = (OmegaConf.select(cfg, "data.budget.tokens"), OmegaConf.select(cfg, "data.budget.cost"))
    if budget[1] is not None and OmegaConf.select(cfg, "teacher.price.input_per_m") is None:
        raise UserError("data.budget.cost needs teacher.price (per million tokens): set "
                        "teacher.price.input_per_m= and teacher.price.output_per_m=, or use data.budget.tokens")
    return budget


def generate(cfg: DictConfig, out: Path, todo: list, mode: str, accepted: Path, rejected: Path, spend,
             budget: tuple) -> dict:
    """Ask the teacher for every (task, k) in `todo`, appending to the accepted / rejected files as they come;
    {"stopped_by_budget": why or None, "not_started": n}."""
    from cardforge.agent import llm_judge
    from cardforge.agent.react import Options
    from cardforge.agent.teacher import Teacher, open_teacher

    d = cfg.data
    stop = {"stopped_by_budget": spend.reached(*budget), "not_started": 0}
    if stop["stopped_by_budget"] and todo:
        _log(f"budget reached ({stop['stopped_by_budget']}): nothing asked; raise data.budget to resume")
        stop["not_started"] = len(todo)
        return stop
    if not todo:
        return stop
    opts = Options(mode, int(d.max_steps), bool(d.judge), float(d.tool_timeout_s))
    if d.judge and d.judge_url:
        opts.llm_judge = Teacher(str(d.judge_url).rstrip("/").removesuffix("/v1"), d.judge_model,
                                 llm_judge.JUDGE_SAMPLING, float(cfg.teacher.timeout_s), int(d.retries),
                                 int(cfg.teacher.concurrency), label=str(d.judge_model or "judge"))
    if mode == "execute":
        from cardforge.core.sandbox import check_available

        check_available()  # fail before the teacher starts, with the fix in the message
    with open_teacher(cfg, out, spend) as teacher:
        simulator = None
        if mode == "simulate" and d.simulator_url:
            simulator = Teacher(str(d.simulator_url).rstrip("/").removesuffix("/v1"),
                                d.simulator_model, teacher.sampling, teacher.timeout_s, teacher.retries,
                                teacher.concurrency, label=str(d.simulator_model or "simulator"))
        return asyncio.run(_generate(todo, teacher, opts, accepted, rejected, simulator, budget))


def write_manifest(cfg: DictConfig, out: Path, accepted: Path, rejected: Path, mode: str, spend, budget: tuple,
                   stop: dict, t0: float) -> tuple[dict, list, dict]:
    """manifest.json and table.md over both files, logged with the data metrics: (manifest, rejected
    trajectories, info)."""
    import mlflow

    from cardforge.data.manifest import build_manifest, table, token_stats

    d = cfg.data
    if not accepted.exists():  # nothing accepted yet: still the path the next stage reads
        atomic_write_text(accepted, "")
    acc = read_jsonl(accepted)[0]
    rej = read_jsonl(rejected)[0] if rejected.exists() else []
    try:
        tokens = token_stats(acc, _student_tokenizer(cfg), int(d.max_seq_len))
    except Exception as e:  # noqa: BLE001 - no local student tokenizer (e.g. the 27B card without weights)
        tokens = {"error": f"{type(e).__name__}: {e}"[:300]}
    info = {"teacher": str(cfg.teacher.model), "tool_results": mode, "judge": bool(d.judge),
            "sources": list(d.sources), "samples_per_task": int(d.samples_per_task),
            "resume_key": resume_key(cfg), "wall_s": round(time.monotonic() - t0, 1)}
    manifest = build_manifest(accepted, acc, rej, tokens=tokens, info=info)
    manifest["spend"] = {**spend.as_dict(), "currency": str(OmegaConf.select(cfg, "teacher.price.currency")
                                                             or "USD"),
                         "priced": OmegaConf.select(cfg, "teacher.price.input_per_m") is not None,
                         "budget": {"tokens": budget[0], "cost": budget[1]}, **stop}
    atomic_write_json(DataOutputs(out).manifest, manifest)
    atomic_write_text(out / "table.md", table(manifest))
    _log(table(manifest))
    metrics = {f"data.{k}": float(v) for k, v in manifest["counts"].items()}
    metrics.update({f"data.rejected.{r}": float(n) for r, n in manifest["rejections"].items()})
    metrics.update({f"data.tokens.{k}": float(v) for k, v in (tokens or {}).items()
                    if isinstance(v, (int, float))})
    metrics["data.wall_s"] = info["wall_s"]
    metrics.update({f"data.spend.{k}": float(v) for k, v in spend.as_dict().items()})
    metrics["data.spend.stopped_by_budget"] = float(bool(stop["stopped_by_budget"]))
    mlflow.log_metrics(metrics)
    mlflow.set_tag("data.sha256", str(manifest["sha256"]))
    for p in (accepted, rejected, DataOutputs(out).manifest, out / "table.md", DataOutputs(out).spend):
        if p.exists():
            mlflow.log_artifact(str(p), "data")
    return manifest, rej, info


def check_accepted(cfg: DictConfig, out: Path, manifest: dict, rej: list, rejected: Path, stop: dict) -> None:
    """Fewer than data.min_accepted samples accepted: one error line, saying why (an outage, the budget, or
    the rejections by reason)."""
    import mlflow

    d, c = cfg.data, manifest["counts"]
    if note := outage_note(cfg, rej, out):
        _log(note)
        mlflow.set_tag("data.outage", note[:5000])
    if c["accepted"] < int(d.min_accepted) and note and 2 * len(
            [t for t in rej if t.extra.get("reason") in TRANSIENT]) >= max(1, c["samples"] - c["accepted"]):
        raise UserError(f"only {c['accepted']} of {c['samples']} samples were accepted (data.min_accepted="
                        f"{d.min_accepted}): {note}")
    if c["accepted"] < int(d.min_accepted):
        raise UserError(f"only {c['accepted']} of {c['samples']} samples were accepted (data.min_accepted="
                        f"{d.min_accepted}); rejections by reason: {manifest['rejections']} — see {rejected}; "
                        "try more data.samples_per_task, easier data.sources or a stronger teacher="
                        + (f"; the budget stopped the stage ({stop['stopped_by_budget']}): raise data.budget"
                           if stop["stopped_by_budget"] else ""))


def run(cfg: DictConfig) -> DataResult:
    from cardforge.core.io import preflight_output
    from cardforge.agent.react import sample_id
    from cardforge.agent.tasks import load_tasks
    from cardforge.agent.teacher import Spend

    t0 = time.monotonic()
    d, out = cfg.data, out_dir(cfg)
    # before the teacher starts: a read-only or full disk is one line, not a traceback after the first sample
    preflight_output(out, 16 << 20, stage="data")
    with tracking.stage_run(cfg, "data") as run_:
        tasks = load_tasks(list(d.sources), int(d.num_samples) or None, int(d.seed))
        accepted, rejected = _prepare_files(cfg, out)
        done = completed_task_ids(accepted) | completed_task_ids(rejected)
        todo = [(t, k) for t in tasks for k in range(int(d.samples_per_task)) if sample_id(t, k) not in done]
        mode = str(cfg.data.tool_results).split(".")[-1]  # an enum prints as ToolResults.execute
        _log(f"{len(tasks)} tasks x {d.samples_per_task} samples: {len(todo)} to ask, {len(done)} already done "
             f"(tool_results={mode}, judge={bool(d.judge)})")
        spend = Spend.load(DataOutputs(out).spend)  # what earlier runs spent counts against the budget
        budget = budget_of(cfg)
        stop = generate(cfg, out, todo, mode, accepted, rejected, spend, budget)
        manifest, rej, info = write_manifest(cfg, out, accepted, rejected, mode, spend, budget, stop, t0)
        check_accepted(cfg, out, manifest, rej, rejected, stop)
        return DataResult(str(accepted), str(rejected), manifest, run_.info.run_id, info["wall_s"])
