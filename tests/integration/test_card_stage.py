"""The card stage against a real MLflow store: the real pipeline chains stand-in stages that log what the real
stages log (tests/fixtures/card/fixture_stages.py), then the real card stage compiles the card."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from cardforge.core.config.compose import compose
from cardforge.core.errors import UserError
from cardforge.pipeline import run as pipeline_run

_spec = importlib.util.spec_from_file_location(
    "card_fixture_stages", Path(__file__).resolve().parents[1] / "fixtures" / "card" / "fixture_stages.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

NUM = re.compile(r"(?<![\w.])[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w.])")
REF = re.compile(r"\[run ([0-9a-f]{8})\]")
REAL_RESOLVE = pipeline_run.resolve_stage
FIXED = ("95%", "10⁹", "2³⁰")  # method constants in the prose (CI level, unit definitions), not measurements


def _pipeline(monkeypatch, uri, experiment, outputs, *overrides, only=None):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(pipeline_run, "resolve_stage", fx.resolver(REAL_RESOLVE, only))
    cfg = compose("pipeline", [f"logger.experiment_name={experiment}", f"paths.outputs={outputs}", *overrides])
    return cfg, pipeline_run.run(cfg)


@pytest.fixture(scope="module")
def built(_mlflow_store, tmp_path_factory):
    """One fixture pipeline (data -> train -> merge -> quant -> eval -> card) shared by the read-only tests."""
    with pytest.MonkeyPatch.context() as mp:
        out = tmp_path_factory.mktemp("card") / "artifacts"
        _, res = _pipeline(mp, _mlflow_store, "t-card-built", out)
    client = MlflowClient(_mlflow_store)
    runs = {s: client.get_run(res.results[s]["run_id"])
            for s in ("data", "train", "merge", "mtp", "quant", "eval", "card")}
    return SimpleNamespace(res=res, out=out, runs=runs, client=client, uri=_mlflow_store,
                           text=(out / "card" / "README.md").read_text())


def _ref(run) -> str:
    return f"[run {run.info.run_id[:8]}]"


def test_card_nests_under_the_pipeline_and_logs_card_and_plots(built):
    card = built.runs["card"]
    assert built.res.done == ["models", "data", "train", "merge", "mtp", "quant", "eval", "card"]
    assert card.data.tags["mlflow.parentRunId"] == built.res.run_id
    assert card.data.tags["cardforge.stage"] == "card"
    logged = {a.path for a in built.client.list_artifacts(card.info.run_id, "card")}
    assert logged == {"card/README.md", "card/card.json", "card/loss_curve.png", "card/mtp_bench.png",
                      "card/accuracy_delta.png"}
    for png in ("loss_curve.png", "mtp_bench.png", "accuracy_delta.png"):
        assert (built.out / "card" / png).stat().st_size > 1000
        assert f"]({png})" in built.text
    assert "## 🇬🇧 English" in built.text and "## 🇨🇳 中文" in built.text
    assert "**Not measured in this run**" not in built.text and "**本次运行未测量**" not in built.text


def test_card_shows_the_grafted_vs_retrained_mtp_head(built):
    MTP_OFFLINE, MTP_ONLINE = fx.MTP_OFFLINE, fx.MTP_ONLINE  # noqa: N806
    ref = f"[run {built.runs['mtp'].info.run_id[:8]}]"
    for head, stats in MTP_OFFLINE.items():
        assert (f"| {head} | {stats['step1_acc']:.3f} | {stats['accept_rate']:.3f} (n-max 3) "
                f"| {stats['mean_accept_len']:.2f} | {ref} |") in built.text
    for head, rate in MTP_ONLINE.items():
        assert f"| `{head}` · coding · 3 |" in built.text and f"| {rate:.3f} |" in built.text
    assert "MTP head retrained on the distilled distribution" in built.text and "重训的 MTP 头" in built.text


def test_tables_hold_exactly_the_logged_numbers_with_run_ids(built):
    ev, q, t, d = (built.runs[s] for s in ("eval", "quant", "train", "data"))
    m = ev.data.metrics
    for suite in ("gpqa_diamond", "mmlu"):
        cells = []
        for label in ("distill", "base"):
            g = lambda k: m[f"{label}.{suite}.{k}"]  # noqa: E731
            cells.append(f"{100 * g('accuracy'):.1f}% [{100 * g('ci95_low'):.1f}%, {100 * g('ci95_high'):.1f}%] "
                         f"({int(g('correct'))}/{int(g('n'))})")
        dl = lambda k: m[f"delta.{suite}.{k}"]  # noqa: E731
        for paired in ("paired", "对配对"):  # English and Chinese sections: same numbers
            delta = (f"{100 * dl('delta'):+.1f} pp [{100 * dl('ci95_low'):+.1f}, {100 * dl('ci95_high'):+.1f}] "
                     f"({int(dl('n'))} {paired})")
            row = f"| {suite} | " + " | ".join([*cells, delta, f"{dl('mcnemar_p'):.4f}"]) + f" | {_ref(ev)} |"
            assert built.text.count(row) == 1, row
    # the fixture's own numbers, as logged: 6/8 vs 3/8 on gpqa, finish reasons and parse fails per model
    assert "(5/8)" in built.text and "(3/8)" in built.text
    fin = m["distill.gpqa_diamond.finish_stop"], m["distill.gpqa_diamond.finish_length"]
    assert f"| gpqa_diamond · distill | {int(fin[0])} | {int(fin[1])} | 0 | 0 |" in built.text

    tier = Path(fx._gguf(built.out, "Q4_K_M-imatrix")).stem
    assert f"| `{tier}` · coding · 2 | {30.75:.1f} | {30.75 / 20.5:.2f}× | 0.650 | 2.30 | {_ref(ev)} |" in built.text
    assert f"| `{tier}` · reasoning · off | {19.5:.1f} | 1.00× | — | — | {_ref(ev)} |" in built.text
    # per quant: sizes, KLD, PPL from the quant run; MTP at serve.mtp.n_max=3 (coding) from the eval run
    assert (f"| `Q4_K_M-imatrix` | 0.0311 | 0.029 | 0.01234 | 812.345 | 20.5 | 31.0 | {31.0 / 20.5:.2f}× | 0.500 | "
            f"{_ref(q)} {_ref(ev)} |") in built.text
    assert f"| `Q8_0` | 0.0377 | 0.0351 | 0.00051 | 801.000 | — | — | — | — | {_ref(q)} |" in built.text
    assert f"| `base:Q4_K_M-imatrix` | 0.0311 | 0.029 | — | — | — | — | — | — | {_ref(q)} |" in built.text
    assert f"`Q4_K_M-imatrix` is 0.0311 GB = 0.029 GiB {_ref(q)}" in built.text
    # training details from the train run's resolved config, data counts from the data run
    p = t.data.params
    assert (f"LoRA, r = {p['lora.r']}, α = {p['lora.lora_alpha']}, dropout = {p['lora.lora_dropout']}, targets = "
            "`q_proj`") in built.text
    assert f"(`q_proj:1,k_proj:1`) {_ref(t)}" in built.text
    assert f"`{p['trainer.optimizer']}` (→ `adamw`), lr {p['trainer.lr']}" in built.text
    assert f"final 1.8000, 123.4 tokens/s, 41.2 s {_ref(t)}" in built.text
    assert f"9 / 12 accepted (75.0%), trained tokens 43.2%, max_seq_len {p['data.max_seq_len']} {_ref(d)}" in built.text
    assert f"MTP tensors 15 (manifest match `true`) {_ref(built.runs['merge'])}" in built.text
    # limitations follow data.tool_results (tiny preset: execute, the real sandbox + judge)
    assert "data.tool_results=execute" in built.text and "real execution in a sandbox" in built.text
    assert "not executed" not in built.text


def _runs_by_short(client, uri_experiment):
    exp = client.get_experiment_by_name(uri_experiment)
    out = {}
    for r in client.search_runs([exp.experiment_id]):
        vals = list(r.data.metrics.values())
        for v in r.data.params.values():
            try:
                vals.append(float(v))
            except ValueError:
                pass
        out[r.info.run_id[:8]] = vals
    return out


def _matches(token: str, values: list[float]) -> bool:
    x = float(token)
    if "e" in token:
        return any(abs(c - x) <= 0.05 * abs(x) for v in values for c in (v, 100 * v))
    decimals = len(token.split(".")[1]) if "." in token else 0
    tol = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(c - x) <= tol for v in values for c in (v, 100 * v))


def audit(text: str, runs: dict[str, list[float]]) -> int:
    """Every number in a line or table row is a metric/param (or ×100) of a run that line cites; lines that
    cite no run hold no numbers (code, attribution and the method constants aside). Returns numbers checked."""
    checked, in_code, section = 0, False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if line.startswith("#"):
            section = line
            continue
        if in_code or line.startswith("|---") or line in ("---",) or line.startswith(("license:", "tags:")):
            continue
        refs = REF.findall(line)
        body = REF.sub("", re.sub(r"`[^`]*`", "", line))
        for fixed in FIXED:
            body = body.replace(fixed, "")
        if line.startswith("|"):
            cells = body.split("|")[1:-1]
            if not refs:  # a header row
                continue
            body = "|".join(cells[1:])  # the first cell names the row
        elif line.startswith("- **") and "**:" in line:
            body = body.split("**:", 1)[1]
        numbers = NUM.findall(body)
        if not refs:
            if "Attribution" in section or "归因" in section:
                continue
            assert not numbers, f"numbers without a run id: {line!r}"
            continue
        values = [v for r in refs for v in runs[r]]
        for tok in numbers:
            assert _matches(tok, values), f"{tok} in {line!r} is not in runs {refs}"
            checked += 1
    return checked


def test_every_number_in_the_card_is_in_mlflow(built):
    checked = audit(built.text, _runs_by_short(built.client, "t-card-built"))
    assert checked > 100  # both languages' tables and details


def test_audit_catches_an_invented_number(built):
    forged = built.text.replace("| 0.01234 |", "| 0.01299 |", 1)
    with pytest.raises(AssertionError, match="0.01299"):
        audit(forged, _runs_by_short(built.client, "t-card-built"))


def test_rerun_cites_the_earlier_runs_of_skipped_stages(mlflow_uri, mlflow_experiment, tmp_path, monkeypatch):
    out = tmp_path / "artifacts"
    _, first = _pipeline(monkeypatch, mlflow_uri, mlflow_experiment, out)
    _, second = _pipeline(monkeypatch, mlflow_uri, mlflow_experiment, out, "eval.seed=7")
    assert second.skipped == ["models", "data", "train", "merge", "mtp", "quant"] and "eval" in second.done
    text = (out / "card" / "README.md").read_text()
    assert f"`{second.run_id}`" in text  # the card is of the second invocation
    old_train, new_eval = first.results["train"]["run_id"], second.results["eval"]["run_id"]
    assert f"[run {old_train[:8]}]" in text and f"[run {new_eval[:8]}]" in text
    assert f"[run {first.results['eval']['run_id'][:8]}]" not in text
    assert re.search(rf"`{old_train}`.*skipped as unchanged", text)
    card = MlflowClient(mlflow_uri).get_run(second.results["card"]["run_id"])
    assert card.data.tags["mlflow.parentRunId"] == second.run_id


def test_missing_stages_render_not_measured(mlflow_uri, mlflow_experiment, tmp_path, monkeypatch):
    from cardforge.card.stage import run as card_run

    out = tmp_path / "artifacts"
    _, res = _pipeline(monkeypatch, mlflow_uri, mlflow_experiment, out, only={"data", "train"})
    assert res.stopped_at == "merge"  # the pipeline stops where a stage is missing; the card is compiled after
    result = card_run(compose("card", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={out}"]))
    text = Path(result.card).read_text()
    assert result.parent == res.run_id and result.not_measured == ["merge", "mtp", "quant", "eval"]
    for stage in ("quant", "eval"):
        assert f"**Not measured in this run** — no finished `{stage}` run under pipeline run `{res.run_id[:8]}`" in text
        assert f"**本次运行未测量** —— 流水线 run `{res.run_id[:8]}` 下没有已完成的 `{stage}` run" in text
    assert "| gpqa_diamond" not in text and "| `Q4_K_M" not in text and "mtp_bench.png" not in text
    assert "r = 64" in text  # what was measured is still there
    audit(text, _runs_by_short(MlflowClient(mlflow_uri), mlflow_experiment))
    card = MlflowClient(mlflow_uri).get_run(result.run_id)
    assert card.data.tags["mlflow.parentRunId"] == res.run_id


def test_cli_compiles_the_card_of_a_given_parent(built, tmp_path):
    out = tmp_path / "artifacts"
    env = {**os.environ, "MLFLOW_TRACKING_URI": built.uri}
    proc = subprocess.run([sys.executable, "-m", "cardforge.card", f"card.parent_run_id={built.res.run_id}",
                           "logger.experiment_name=t-card-built", f"paths.outputs={out}",
                           f"hydra.run.dir={tmp_path / 'hydra'}"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "card" / "README.md").read_text()
    assert f"[run {built.res.results['eval']['run_id'][:8]}]" in text


def test_no_pipeline_run_names_the_fix(mlflow_uri, mlflow_experiment, tmp_path):
    from cardforge.card.stage import run as card_run

    cfg = compose("card", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={tmp_path}"])
    with pytest.raises(UserError, match="card.parent_run_id"):
        card_run(cfg)
