"""The issue-19 tables from the proof suite's records: the gate (distill vs base per tier) and the method table
(one row per training arm on the same held-out tasks, paired tests between arms).

    python -m cardforge.eval.proof_report ARM=EVAL_DIR [ARM=EVAL_DIR ...] [--out FILE.md] [--mlflow]

EVAL_DIR is an eval stage's output dir (<outputs>/eval). For each dir it reads the proof suite's records of
the main tier (<dir>/<label>/proof.jsonl) and of every eval.tiers entry (<dir>/tiers/<TIER>/<label>/proof.jsonl),
keeping the newest finished record per task (records are appended; a rerun of a rebuilt model appends anew),
and the probe of the same model beside them (<label>/proof_probe.json: did the model write its own observation).
The first ARM is the reference of the paired tests between arms. Rows: accuracy with its Wilson 95% CI,
accuracy by surface form (A: trained, B: held-out only), the invented-observation rate, and per comparison
the paired delta (bootstrap 95% CI), the discordant pairs and the exact sign test (= exact McNemar) p; and
per tier and model, right/asked per task kind (mul, count, sum, grep).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cardforge.eval import stats

GATE_DELTA, GATE_P, GATE_N = 0.30, 0.001, 100


def latest(path: Path) -> list[dict]:
    """The newest finished record per task id, in first-seen order."""
    if not path.is_file():
        return []
    by: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        if isinstance(r, dict) and r.get("id") and r.get("finish_reason") != "error":
            by[r["id"]] = r
    return [_with_probe(r, probes) for probes in [_probes(path)] for r in by.values()]


def _probes(path: Path) -> dict[str, dict]:
    """The probe cache beside the records (<label>/proof_probe.json: {model_id|sampling_hash: {task id: {invented,
    ...}}}). The suite runs the probe after its records are written, so the JSONL never carries the result."""
    f = path.with_name(f"{path.stem}_probe.json")
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _with_probe(r: dict, probes: dict[str, dict]) -> dict:
    """The record with `invented_observation` from the probe of the same served model and sampling (None: the
    task was not probed, or its probe failed)."""
    if r.get("invented_observation") is not None:
        return r
    p = probes.get(f"{r.get('model_id')}|{r.get('sampling_hash')}", {}).get(r["id"])
    ok = isinstance(p, dict) and p.get("finish_reason") != "error" and p.get("invented") is not None
    return {**r, "invented_observation": bool(p["invented"]) if ok else None}


def tiers_of(eval_dir: Path, main_tier: str = "main") -> dict[str, Path]:
    """{tier label: the dir holding <label>/proof.jsonl}: the main run, then eval.tiers."""
    out = {main_tier: eval_dir} if (eval_dir / "distill" / "proof.jsonl").is_file() else {}
    tiers = eval_dir / "tiers"
    if tiers.is_dir():
        out.update({p.name: p for p in sorted(tiers.iterdir()) if (p / "distill" / "proof.jsonl").is_file()})
    return out


def _group(r: dict) -> str:
    """The record's surface form: `group` as the suite returns it, else from the task id (the JSONL lacks it)."""
    return r.get("group") or "form " + str(r["id"]).rsplit("/", 1)[-1].split("-")[1]


def _kind(r: dict) -> str:
    """The task kind (mul, count, sum, grep): the record's category, else from the id (proof/heldout/mul-B-0004)."""
    return r.get("category") or str(r["id"]).rsplit("/", 1)[-1].split("-")[0]


def kind_rows(eval_dir: Path, main_tier: str) -> tuple[list[str], dict]:
    """Per tier and model, right/asked per task kind: which skills the student learnt (and quantization keeps)."""
    from cardforge.agent.proof_tasks import KINDS

    rows = ["| tier | model | " + " | ".join(KINDS) + " |", "|---|---|" + "---|" * len(KINDS)]
    metrics = {}
    for tier, d in tiers_of(eval_dir, main_tier).items():
        for label in ("distill", "base"):
            rs = latest(d / label / "proof.jsonl")
            if not rs:
                continue
            cells = []
            for kind in KINDS:
                ks = [r for r in rs if _kind(r) == kind]
                k = sum(bool(r.get("correct")) for r in ks)
                cells.append(f"{k}/{len(ks)}" if ks else "-")
                if ks:
                    metrics[f"{tier}.{label}.{kind}_accuracy"] = k / len(ks)
            rows.append(f"| {tier} | {label} | " + " | ".join(cells) + " |")
    return rows, metrics


def _form_acc(records: list[dict], form: str) -> str:
    rs = [r for r in records if _group(r) == f"form {form}"]
    k = sum(bool(r.get("correct")) for r in rs)
    return f"{k}/{len(rs)}" if rs else "-"


def _acc(records: list[dict]) -> str:
    a = stats.accuracy(records)
    return f"{a['accuracy']:.1%} ({a['ci95_low']:.1%}–{a['ci95_high']:.1%}), {a['correct']}/{a['n']}"


def _invented(records: list[dict]) -> str:
    probed = [r for r in records if r.get("invented_observation") is not None]
    if not probed:
        return "not probed"
    k = sum(bool(r["invented_observation"]) for r in probed)
    lo, hi = stats.wilson(k, len(probed))
    return f"{k / len(probed):.1%} ({lo:.1%}–{hi:.1%}), {k}/{len(probed)}"


def _cmp(a: list[dict], b: list[dict], seed: int = 0) -> dict:
    d = stats.paired(a, b, seed=seed)
    s = stats.sign_test(a, b)
    return {**d, "p_one_sided": s["p_one_sided"]}


def gate_rows(eval_dir: Path, main_tier: str) -> tuple[list[str], dict]:
    rows, metrics = [], {}
    for tier, d in tiers_of(eval_dir, main_tier).items():
        dist, base = latest(d / "distill" / "proof.jsonl"), latest(d / "base" / "proof.jsonl")
        if not base:
            continue
        c = _cmp(dist, base)
        ok = c["n"] >= GATE_N and c["delta"] >= GATE_DELTA and c["mcnemar_p"] < GATE_P
        rows.append(f"| {tier} | {_acc(dist)} | {_acc(base)} | {_form_acc(dist, 'A')} / {_form_acc(dist, 'B')} | "
                    f"{_form_acc(base, 'A')} / {_form_acc(base, 'B')} | {c['delta']:+.1%} ({c['ci95_low']:+.1%}–"
                    f"{c['ci95_high']:+.1%}) | {c['only_a']} / {c['only_b']} | {c['mcnemar_p']:.2g} | "
                    f"{'PASS' if ok else 'FAIL'} |")
        metrics[tier] = {"delta": c["delta"], "ci95_low": c["ci95_low"], "ci95_high": c["ci95_high"],
                         "p": c["mcnemar_p"], "n": c["n"], "gate": float(ok),
                         "distill_accuracy": stats.accuracy(dist)["accuracy"],
                         "base_accuracy": stats.accuracy(base)["accuracy"]}
    head = ["| tier | distill accuracy (95% CI) | base accuracy (95% CI) | distill form A / B | base form A / B | "
            "Δ distill−base (paired bootstrap 95% CI) | only distill / only base right | exact McNemar p | "
            f"gate (Δ ≥ +{GATE_DELTA:.0%}, p < {GATE_P}, n ≥ {GATE_N}) |",
            "|---|---|---|---|---|---|---|---|---|"]
    return head + rows, metrics


def method_rows(arms: dict[str, Path], tier: str) -> tuple[list[str], dict]:
    recs = {}
    for name, d in arms.items():
        t = tiers_of(d, "main")
        src = t.get(tier) or t.get("main")
        recs[name] = latest(src / "distill" / "proof.jsonl") if src else []
    ref = next(iter(recs))
    rows = ["| arm | accuracy (95% CI) | form A / B | invented <tool_response> rate (95% CI) | "
            f"Δ vs {ref} (paired 95% CI) | only this / only {ref} right | exact McNemar p |",
            "|---|---|---|---|---|---|---|"]
    metrics = {}
    for name, rs in recs.items():
        if not rs:
            rows.append(f"| {name} | no records | | | | | |")
            continue
        if name == ref:
            cmp_cells = "(reference) | | "
        else:
            c = _cmp(rs, recs[ref])
            cmp_cells = (f"{c['delta']:+.1%} ({c['ci95_low']:+.1%}–{c['ci95_high']:+.1%}) | {c['only_a']} / "
                         f"{c['only_b']} | {c['mcnemar_p']:.2g}")
            metrics[f"{name}.delta_vs_{ref}"] = c["delta"]
            metrics[f"{name}.p_vs_{ref}"] = c["mcnemar_p"]
        rows.append(f"| {name} | {_acc(rs)} | {_form_acc(rs, 'A')} / {_form_acc(rs, 'B')} | {_invented(rs)} | "
                    f"{cmp_cells} |")
        metrics[f"{name}.accuracy"] = stats.accuracy(rs)["accuracy"]
        probed = [r for r in rs if r.get("invented_observation") is not None]
        if probed:
            metrics[f"{name}.invented_rate"] = sum(bool(r["invented_observation"]) for r in probed) / len(probed)
    return rows, metrics


def report(arms: dict[str, Path], main_tier: str = "Q4_K_M-imatrix") -> tuple[str, dict]:
    first = next(iter(arms.values()))
    gate, gm = gate_rows(first, main_tier)
    parts = [f"### Gate: distill vs base on the held-out proof tasks ({next(iter(arms))})", "", *gate, ""]
    metrics = {f"gate.{t}.{k}": v for t, m in gm.items() for k, v in m.items()}
    kinds, km = kind_rows(first, main_tier)
    parts += ["### Per task kind (right / asked)", "", *kinds, ""]
    metrics.update({f"kind.{k}": v for k, v in km.items()})
    if len(arms) > 1:
        rows, mm = method_rows(arms, main_tier)
        parts += [f"### Method arms at {main_tier} (same held-out tasks; paired tests against the first arm)", "",
                  *rows, ""]
        metrics.update({f"method.{k}": v for k, v in mm.items()})
    return "\n".join(parts), metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cardforge.eval.proof_report", description=__doc__.split("\n\n")[0])
    p.add_argument("arms", nargs="+", help="NAME=EVAL_DIR, the reference arm first")
    p.add_argument("--main-tier", default="Q4_K_M-imatrix", help="label of the eval's main tier")
    p.add_argument("--out", help="write the markdown here too")
    p.add_argument("--mlflow", action="store_true", help="log the numbers as metrics of a new MLflow run")
    a = p.parse_args(argv)
    arms = {}
    for spec in a.arms:
        name, sep, d = spec.partition("=")
        if not sep or not Path(d).is_dir():
            sys.exit(f"proof_report: {spec!r}: write NAME=EVAL_DIR with an existing eval output dir")
        arms[name] = Path(d)
    text, metrics = report(arms, a.main_tier)
    print(text)
    if a.out:
        from cardforge.core.io import atomic_write_text

        atomic_write_text(Path(a.out), text + "\n")
    if a.mlflow:
        import os

        import mlflow

        from cardforge.core import paths
        from cardforge.core.tracking import get_or_create_experiment

        # the repo's store (as every stage logs), unless MLFLOW_TRACKING_URI names another; the experiment keeps
        # its artifacts next to the store (mlflow.set_experiment would put them in the cwd's ./mlruns)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or paths.default_tracking_uri()
        exp_id = get_or_create_experiment("cardforge", uri)
        with mlflow.start_run(experiment_id=exp_id, run_name="proof_report",
                              tags={"stage": "proof_report", "experiment": "distill_proof"}):
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.log_text(text, "proof_report.md")


if __name__ == "__main__":
    main()
