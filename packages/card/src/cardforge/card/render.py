"""Markdown for the card: one section per language, the same tables under translated headings.

Every value the card states about the run goes through `Context.metric/param/tag/key_n`: it is printed from
one recorded value (a metric, param or tag of one run, or the n-max of a logged MTP metric's name) formatted
by `fmt_value`, and the place it lands in the text is written to a ledger (`card.json` "values": line,
columns, run, kind, key, format). A value the run did not record renders "not measured" (and the ledger
says which key was absent), never a default. The line a value lands on cites its run (`[run xxxxxxxx]`).
`cardforge.card.audit` checks the card against the ledger and MLflow: every number in the text lies inside
one ledger span, and every span equals, as rendered, the value MLflow holds.

Fixed prose holds no numbers except the method constants `audit.FIXED` lists (CI level, unit definitions).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardforge.card.collect import (MTP_METRIC, Collected, StageRun, mtp_rows, quant_files, suite_stats,
                                    tier_suite_stats)
from cardforge.card.plots import DELTA_PLOT
from cardforge.card.text import TEXT
from cardforge.core.artifacts import QuantOutputs, QuantResults, is_base

WHAT = {"en": {"eval": "accuracy metrics", "mtp": "MTP bench metrics", "quant": "per-file metrics"},
        "zh": {"eval": "准确率指标", "mtp": "MTP 测速指标", "quant": "各文件指标"}}
ON_OFF = {"en": {"true": "on", "false": "off"}, "zh": {"true": "开", "false": "关"}}
NOT_MEASURED = {"en": "not measured", "zh": "未测量"}
NA = "—"  # not applicable (no accept rate with speculation off), never "missing"

_OPEN, _MID, _CLOSE = "\x02", "\x03", "\x04"
_MARK = re.compile(f"{_OPEN}(\\d+){_MID}(.*?){_CLOSE}")


# --- formatting: display only, the value is the logged one ---

def p_value(v: float) -> str:
    return f"{v:.4f}" if v >= 1e-4 else f"{v:.1e}"


def fmt_value(v: Any, fmt: str) -> str:
    """How a recorded value is printed; the audit renders MLflow's value with the same function."""
    if fmt == "str":
        return str(v).replace("\n", " ")
    if fmt.startswith("onoff:"):
        return onoff(v, fmt.removeprefix("onoff:"))
    x = float(v)
    if fmt == "int":
        return str(int(x))
    if fmt == "pct":  # a logged fraction as a percentage
        return f"{100 * x:.1f}%"
    if fmt == "pp":  # a logged fraction difference in percentage points
        return f"{100 * x:+.1f}"
    if fmt == "p":
        return p_value(x)
    if fmt == "x":  # a speed ratio
        return f"{x:.2f}×"
    return format(x, fmt)


def pct(v: float) -> str:
    return fmt_value(v, "pct")


def onoff(v: Any, lang: str) -> str:
    return ON_OFF[lang].get(str(v).lower(), str(v))


def param(run: StageRun, key: str, default: str = "—") -> str:
    """A raw param for decisions (never printed as a fact: printing goes through Context.param)."""
    return run.params.get(key, default)


@dataclass
class Context:
    """What a section needs besides the runs, and the ledger of every value printed."""

    title: str
    experiment: str
    card_run: StageRun  # holds the card's own resolved config (params) for config-only numbers
    attribution: list[dict[str, Any]]
    languages: list[str]
    commands: dict[str, str] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    license: str = "apache-2.0"
    release_note: dict[str, str] = field(default_factory=dict)  # lang -> said under vLLM/SGLang's local folder
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def _mark(self, run: StageRun, kind: str, key: str, fmt: str, text: str, lang: str = "en") -> str:
        self.ledger.append({"run_id": run.run_id, "kind": kind, "key": key, "fmt": fmt, "lang": lang})
        return f"{_OPEN}{len(self.ledger) - 1}{_MID}{text}{_CLOSE}"

    def metric(self, run: StageRun, key: str, fmt: str, lang: str) -> str:
        v = run.metrics.get(key)
        return self._mark(run, "metric", key, fmt, NOT_MEASURED[lang] if v is None else fmt_value(v, fmt),
                          lang)

    def param(self, run: StageRun, key: str, lang: str) -> str:
        v = run.params.get(key)
        return self._mark(run, "param", key, "str", NOT_MEASURED[lang] if v is None else fmt_value(v, "str"),
                          lang)

    def tag(self, run: StageRun, key: str, lang: str) -> str:
        v = run.tags.get(key)
        return self._mark(run, "tag", key, "str", NOT_MEASURED[lang] if v is None else fmt_value(v, "str"),
                          lang)

    def onoff(self, run: StageRun, key: str, lang: str) -> str:
        """A boolean param printed as on/off (开/关)."""
        v = run.params.get(key)
        return self._mark(run, "param", key, f"onoff:{lang}", NOT_MEASURED[lang] if v is None else onoff(v, lang),
                          lang)

    def key_n(self, run: StageRun, metric_key: str) -> str:
        """The n-max named by a logged MTP metric (`mtp.<tier>.<prompts>.n<N>.<stat>`)."""
        m = MTP_METRIC.match(metric_key)
        return self._mark(run, "key_n", metric_key, "int", str(int(m["n"])))


def finalize(text: str, ledger: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Strip the value marks; return the text and, per printed value, its ledger entry with line and columns."""
    lines, values = [], []
    for lineno, line in enumerate(text.split("\n")):
        clean, pos = "", 0
        for m in _MARK.finditer(line):
            clean += line[pos:m.start()]
            start = len(clean)
            clean += m[2]
            values.append({**ledger[int(m[1])], "line": lineno, "start": start, "end": len(clean), "text": m[2]})
            pos = m.end()
        lines.append(clean + line[pos:])
    return "\n".join(lines), values


def not_measured(stage: str, c: Collected, ctx: Context, lang: str) -> str:
    return TEXT[lang]["not_measured"].format(stage=stage, parent=c.parent.run_id[:8], experiment=ctx.experiment)


def _true(run: StageRun | None, key: str) -> bool | None:
    v = None if run is None else run.params.get(key)
    return None if v is None else str(v).lower() == "true"


# --- sections ---

def training(c: Collected, ctx: Context, lang: str) -> list[str]:
    t, T = c.get("train"), TEXT[lang]
    out = [f"### {T['training']}", ""]
    if t is None:
        return out + [not_measured("train", c, ctx, lang), ""]
    d, m = c.get("data"), c.get("merge")
    P = lambda run, k: ctx.param(run, k, lang)  # noqa: E731
    targets = ", ".join(f"`{x}`" for x in json.loads(param(t, "lora.target_modules", "[]")))
    matched = t.tags.get("train.lora_targets")
    used = t.tags.get("train.optimizer")
    opt = f"`{P(t, 'trainer.optimizer')}`" + (f" (→ `{ctx.tag(t, 'train.optimizer', lang)}`)"
                                              if used and used != param(t, "trainer.optimizer") else "")
    embedded = T["embedded"] if _true(t, "model.embedded") else ""
    out += [
        # the model's name and architecture, never model.path: a local path means nothing on the hub
        f"- **{T['base']}**: `{P(t, 'model.name')}` (arch `{P(t, 'model.arch')}`{embedded}) {t.ref}",
        f"- **{T['method']}**: LoRA, r = {P(t, 'lora.r')}, α = {P(t, 'lora.lora_alpha')}, dropout = "
        f"{P(t, 'lora.lora_dropout')}, targets = {targets}"
        + (f" (`{ctx.tag(t, 'train.lora_targets', lang)}`)" if matched else "") + f" {t.ref}",
        f"- **{T['optim']}**: {opt}, lr {P(t, 'trainer.lr')}, weight decay {P(t, 'trainer.weight_decay')}, "
        f"`{P(t, 'trainer.scheduler')}`, warmup ratio {P(t, 'trainer.warmup_ratio')}, batch "
        f"{P(t, 'trainer.batch_size')} × grad accum {P(t, 'trainer.grad_accum')}, "
        f"`{P(t, 'trainer.precision')}` {t.ref}",
        f"- **{T['length']}**: max_epochs {P(t, 'trainer.max_epochs')}, max_steps {P(t, 'trainer.max_steps')} {t.ref}",
        f"- **{T['loss']}**: {T['final']} {ctx.metric(t, 'train/final_loss', '.4f', lang)}, "
        f"{ctx.metric(t, 'train/tokens_per_s_mean', '.1f', lang)} tokens/s, "
        f"{ctx.metric(t, 'train/wall_s', '.1f', lang)} s {t.ref}",
    ]
    src = d or t
    out.append(f"- **{T['teacher']}**: `{P(src, 'teacher.model')}` (thinking "
               f"{ctx.onoff(src, 'teacher.thinking', lang)}, temperature {P(src, 'teacher.temperature')}, top_p {P(src, 'teacher.top_p')}) {src.ref}")
    if d is not None:
        line = (f"- **{T['data']}**: `{P(d, 'data.name')}`, {ctx.metric(d, 'data.accepted', 'int', lang)} / "
                f"{ctx.metric(d, 'data.samples', 'int', lang)} {T['accepted']} "
                f"({ctx.metric(d, 'data.acceptance_rate', 'pct', lang)})")
        if "data.tokens.trained_fraction" in d.metrics:
            line += f", {T['trained_tokens']} {ctx.metric(d, 'data.tokens.trained_fraction', 'pct', lang)}"
        out.append(f"{line}, max_seq_len {P(d, 'data.max_seq_len')} {d.ref}")
    else:
        out.append(f"- **{T['data']}**: `{P(t, 'data.name')}`, data.num_samples = {P(t, 'data.num_samples')} "
                   f"{t.ref}; " + not_measured("data", c, ctx, lang).lstrip("> "))
    mode = src.params.get("data.tool_results")
    judge = T["judge_on"] if _true(src, "data.judge") else ""
    if mode is None:
        out.append(f"- **{T['tools']}**: {ctx.param(src, 'data.tool_results', lang)} {src.ref}")
    else:
        out.append(f"- **{T['tools']}**: " + (T["tools_execute"].format(judge=judge) if mode == "execute"
                                              else T["tools_simulate"]) + f" (`data.tool_results={mode}`) {src.ref}")
    if m is not None:
        out.append(f"- **{T['merge']}**: BF16 safetensors, MTP tensors {ctx.metric(m, 'merge/mtp_tensors', 'int', lang)}"
                   f" (manifest match `{ctx.tag(m, 'merge.mtp_manifest_match', lang)}`) {m.ref}")
    if "loss_curve.png" in ctx.plots:
        out += ["", "![loss curve](loss_curve.png)"]
    return out + [""]


def attribution(ctx: Context, lang: str) -> list[str]:
    out = [f"### {TEXT[lang]['attribution']}", ""]
    for a in ctx.attribution:
        what = a.get("used_for_zh" if lang == "zh" else "used_for") or a.get("used_for", "")
        out.append(f"- **{a['name']}** — {a['authors']}, {a['year']}" + (f", {a['ref']}" if a.get("ref") else "")
                   + (f": {what}" if what else ""))
    return out + [""]


def _served(ev: StageRun, ctx: Context, lang: str) -> str:
    """What format each compared model was served at, from the eval run's tags: the same-format claim is made
    only when both tags say the same."""
    T = TEXT[lang]
    d, b = ev.tags.get("eval.distill.format"), ev.tags.get("eval.base.format")
    fd, fb = (f"`{ctx.tag(ev, 'eval.distill.format', lang)}`", f"`{ctx.tag(ev, 'eval.base.format', lang)}`")
    spec = ctx.tag(ev, "eval.accuracy_speculation", lang)
    if d is not None and d == b:
        return T["served_same"].format(fmt=fd, spec=spec, ref=ev.ref)
    if d is not None and b is not None:
        return T["served_differ"].format(distill=fd, base=fb, spec=spec, ref=ev.ref)
    return T["served_unknown"].format(distill=fd, base=fb, spec=spec, ref=ev.ref)


def evaluation(c: Collected, ctx: Context, lang: str) -> list[str]:
    ev, T = c.get("eval"), TEXT[lang]
    out = [f"### {T['evaluation']}", ""]
    if ev is None:
        return out + [not_measured("eval", c, ctx, lang), ""]
    suites = suite_stats(ev)
    if not suites:
        return out + [T["no_rows"].format(stage="eval", run=ev.run_id[:8], what=WHAT[lang]["eval"]), ""]
    M = lambda k, f: ctx.metric(ev, k, f, lang)  # noqa: E731
    out += [_served(ev, ctx, lang) + " " + T["eval_method"], "", T["acc_head"], "|---|---|---|---|---|---|"]
    # the main tier's rows, then each eval.tiers tier's (metrics tier.<TIER>.*: the same suites, distill vs base
    # at that GGUF tier), named "suite · TIER"
    tiers = tier_suite_stats(ev)
    main = f" · {ev.tags['eval.distill.format']}" if tiers and ev.tags.get("eval.distill.format") else ""
    rows = [(suite + main, "", per) for suite, per in suites.items()]
    rows += [(f"{suite} · {tier}", f"tier.{tier}.", per) for tier, st in tiers.items() for suite, per in st.items()]
    for name, pre, per in rows:
        suite = name.split(" · ")[0]
        cells = []
        for label in ("distill", "base"):
            if label not in per:
                cells.append(NOT_MEASURED[lang] if label == "distill" or ev.params.get("eval.compare_base", "True")
                             .lower() == "true" else NA)
                continue
            k = f"{pre}{label}.{suite}."
            cells.append(f"{M(k + 'accuracy', 'pct')} [{M(k + 'ci95_low', 'pct')}, {M(k + 'ci95_high', 'pct')}] "
                         f"({M(k + 'correct', 'int')}/{M(k + 'n', 'int')})")
        if "delta" in per:
            k = f"{pre}delta.{suite}."
            cells.append(f"{M(k + 'delta', 'pp')} pp [{M(k + 'ci95_low', 'pp')}, {M(k + 'ci95_high', 'pp')}] "
                         f"({M(k + 'n', 'int')} {T['paired']})")
            cells.append(M(k + "mcnemar_p", "p"))
        else:
            cells += [NA, NA]
        out.append(f"| {name} | " + " | ".join(cells) + f" | {ev.ref} |")
    out += ["", f"{T['finish']}:", "", T["fin_head"], "|---|---|---|---|---|---|---|---|"]
    for suite, per in suites.items():
        for label in ("distill", "base"):
            if label not in per:
                continue
            k = f"{label}.{suite}."
            vals = [M(k + f"finish_{x}", "int") for x in ("stop", "length", "error", "other")]
            vals += [M(k + "parse_fail", "int"), M(k + "median_completion_tokens", "g")]
            out.append(f"| {suite} · {label} | " + " | ".join(vals) + f" | {ev.ref} |")
    # what the eval stage said about each suite (its own note: smoke set, partial run, truncated answers)
    for suite in suites:
        note, trunc = ev.tags.get(f"eval.{suite}.note"), ev.tags.get(f"eval.{suite}.truncation")
        if note:
            out += ["", T["suite_note"].format(suite=suite, note=ctx.tag(ev, f"eval.{suite}.note", lang), ref=ev.ref)]
        if trunc and trunc not in (note or ""):
            out += ["", T["suite_note"].format(suite=suite, note=ctx.tag(ev, f"eval.{suite}.truncation", lang),
                                               ref=ev.ref)]
    if DELTA_PLOT in ctx.plots:
        out += ["", f"![{T['delta_plot']}]({DELTA_PLOT})"]
    return out + [""]


def _mtp_row(ctx: Context, run: StageRun, r: dict, label: str, lang: str) -> str:
    key = f"mtp.{r['tier']}.{r['prompt_type']}.n{r['n_max']}."
    any_key = next(key + s for s in ("tok_s_median", "speedup", "accept_rate", "mean_accept_len") if s in r)
    n = ctx.key_n(run, any_key) if r["n_max"] else "off"
    M = lambda s, f: ctx.metric(run, key + s, f, lang)  # noqa: E731
    spec_off = not r["n_max"]
    return (f"| `{label}` · {r['prompt_type']} · {n} | {M('tok_s_median', '.1f')} "
            f"| {M('speedup', 'x')} | {NA if spec_off else M('accept_rate', '.3f')} "
            f"| {NA if spec_off else M('mean_accept_len', '.2f')} | {run.ref} |")


def _speed_note(rows: list[dict], run: StageRun, ctx: Context, lang: str) -> list[str]:
    """Why a speedup below 1 happens, said only when the run measured one."""
    if any(r.get("speedup") is not None and r["n_max"] and r["speedup"] < 1 for r in rows):
        return ["", TEXT[lang]["slower_note"].format(ref=run.ref)]
    return []


def mtp(c: Collected, ctx: Context, lang: str) -> list[str]:
    ev, T = c.get("eval"), TEXT[lang]
    out = [f"### {T['mtp']}", ""]
    if ev is None:
        return out + [not_measured("eval", c, ctx, lang), ""]
    rows = mtp_rows(ev)
    if not rows:
        return out + [T["no_rows"].format(stage="eval", run=ev.run_id[:8], what=WHAT[lang]["mtp"]), ""]
    out += [T["mtp_lead"].format(repeats=ctx.param(ev, "eval.bench_repeats", lang), ref=ev.ref), "",
            T["mtp_head"], "|---|---|---|---|---|---|"]
    out += [_mtp_row(ctx, ev, r, r["tier"], lang) for r in rows]
    out += _speed_note(rows, ev, ctx, lang)
    if "mtp_bench.png" in ctx.plots:
        out += ["", f"![{T['mtp_plot']}](mtp_bench.png)"]
    return out + [""]


def mtp_head(c: Collected, ctx: Context, lang: str) -> list[str]:
    """The retrained MTP head vs the grafted one: offline (held-out prompts) and online (llama-server)."""
    run, T = c.get("mtp"), TEXT[lang]
    if run is None:
        return []
    P = lambda k: ctx.param(run, k, lang)  # noqa: E731
    out = [f"### {T['mtp_retrain']}", "", T["mtp_retrain_lead"].format(
        steps=P("mtp.steps"), prompts=P("mtp.num_prompts"), n=P("mtp.n_max"), ref=run.ref), "",
        T["mtp_offline_head"], "|---|---|---|---|---|"]
    for head in ("grafted", "retrained"):
        k = f"mtp.offline.{head}."
        out.append(f"| {head} | {ctx.metric(run, k + 'step1_acc', '.3f', lang)} | "
                   f"{ctx.metric(run, k + 'accept_rate', '.3f', lang)} (n-max {P('mtp.n_max')}) "
                   f"| {ctx.metric(run, k + 'mean_accept_len', '.2f', lang)} | {run.ref} |")
    rows = [r for r in mtp_rows(run) if r["tier"].startswith("online.")]
    if rows:
        out += ["", T["mtp_online_lead"].format(tier=P("mtp.bench_tier"), ref=run.ref), "", T["mtp_head"],
                "|---|---|---|---|---|---|"]
        out += [_mtp_row(ctx, run, r, r["tier"].removeprefix("online."), lang) for r in rows]
        out += _speed_note(rows, run, ctx, lang)
    return out + [""]


def _bench_for(key: str, path: str | None, rows: list[dict], n: int) -> dict | None:
    """The bench row (coding prompts, n-max n) measured on this quant file, matched by file stem or tier suffix."""
    stem = Path(path).stem if path else None
    mine = [r for r in rows if r["tier"] in (key, stem) or r["tier"].endswith("-" + key)]
    pick = [r for r in mine if r["n_max"] == n]
    return next((r for r in pick if r["prompt_type"] == "coding"), pick[0] if pick else None)


def _bench_key(r: dict, stat: str) -> str:
    return f"mtp.{r['tier']}.{r['prompt_type']}.n{r['n_max']}.{stat}"


def quant(c: Collected, ctx: Context, lang: str) -> list[str]:
    q, ev, T = c.get("quant"), c.get("eval"), TEXT[lang]
    out = [f"### {T['quant']}", ""]
    if q is None:
        return out + [not_measured("quant", c, ctx, lang), ""]
    files = quant_files(q)
    if not files:
        return out + [T["no_rows"].format(stage="quant", run=q.run_id[:8], what=WHAT[lang]["quant"]), ""]
    listed = QuantResults.from_dict(artifact_json(q, QuantOutputs.RESULTS_ARTIFACT)).files
    order = [k for k in listed if k in files] + sorted(k for k in files if k not in listed)
    rows = mtp_rows(ev) if ev else []
    bench_n = sorted({r["n_max"] for r in rows if r["n_max"]})
    want = ev.params.get("serve.mtp.n_max") if ev else None
    n = int(want) if want is not None and want.isdigit() and int(want) in bench_n else (bench_n[-1] if bench_n else 0)
    kld = q.tags.get("quant.kld_on")
    # the quant stage says whether its KLD text was truly held out (a small data set cannot spare any)
    kld_on = ctx.tag(q, "quant.kld_on", lang) if kld is None else T["kld_held" if kld.startswith("held-out")
                                                                    else "kld_calib"]
    out.append(T["quant_lead"].format(kld_on=kld_on, ref=q.ref))
    if _true(q, "model.embedded") or _true(ev, "model.embedded"):
        out.append(T["ppl_random"].format(model=ctx.param(q, "model.name", lang), ref=q.ref))
    rows = rows if bench_n else []  # speculation-off rows alone give no MTP columns
    if rows:
        ex = next((r for r in rows if r["n_max"] == n), None)
        nk = ctx.key_n(ev, next(_bench_key(ex, s) for s in ("tok_s_median", "speedup", "accept_rate") if s in ex))
        if want is not None and want.isdigit() and int(want) == n:
            out.append(T["quant_mtp_lead"].format(n=nk, ref=ev.ref))
        else:
            out.append(T["quant_mtp_lead_other"].format(n=nk, want=ctx.param(ev, "serve.mtp.n_max", lang), ref=ev.ref))
    out += ["", T["quant_head"], "|---|---|---|---|---|---|---|---|---|---|"]
    for key in order:
        path = listed.get(key, {}).get("path")
        on = _bench_for(key, path, rows, n) if rows else None
        off = _bench_for(key, path, rows, 0) if on else None
        ref_key = key.split(":", 1)[-1]
        no_kld = key.startswith("BF16") or is_base(key) or ref_key == "BF16"
        Q = lambda s, f: ctx.metric(q, f"{key}.{s}", f, lang)  # noqa: E731
        cells = [Q("GB", "g"), Q("GiB", "g"), NA if no_kld else Q("kld_mean", ".5f"),
                 NA if is_base(key) else Q("ppl", ".3f")]
        if on:
            cells += [ctx.metric(ev, _bench_key(off, "tok_s_median"), ".1f", lang) if off else NOT_MEASURED[lang],
                      ctx.metric(ev, _bench_key(on, "tok_s_median"), ".1f", lang),
                      ctx.metric(ev, _bench_key(on, "speedup"), "x", lang),
                      ctx.metric(ev, _bench_key(on, "accept_rate"), ".3f", lang)]
        else:
            cells += [NA] * 4  # this file was not benched
        out.append(f"| `{key}` | " + " | ".join(cells) + f" | {q.ref}" + (f" {ev.ref}" if on else "") + " |")
    out += ["", T["not_benched"], "", T["gib"]]
    sized = [k for k in order if "GB" in files[k] and "GiB" in files[k] and not (k.startswith("BF16") or is_base(k))]
    # the file the MTP columns measured (the one the card recommends), else the first quantized one
    ex = next((k for k in sized if _bench_for(k, listed.get(k, {}).get("path"), rows, n)), sized[0] if sized else None)
    if ex:
        out.append(T["gib_example"].format(key=ex, gb=ctx.metric(q, f"{ex}.GB", "g", lang),
                                           gib=ctx.metric(q, f"{ex}.GiB", "g", lang), ref=q.ref))
    return out + [""]


def protocol(c: Collected, ctx: Context, lang: str) -> list[str]:
    ev, T = c.get("eval"), TEXT[lang]
    out = [f"### {T['protocol']}", ""]
    if ev is None:
        return out + [not_measured("eval", c, ctx, lang), ""]
    p = {k: ctx.param(ev, f"eval.{k}", lang) for k in ("temperature", "top_p", "max_tokens", "concurrency", "seed",
                                                       "timeout_s")}
    oo = {k: ctx.onoff(ev, f"eval.{k}", lang) for k in ("thinking", "stream")}
    return out + [T["protocol_text"].format(thinking=oo["thinking"], stream=oo["stream"], timeout=p.pop("timeout_s"),
                                            ref=ev.ref, **p), ""]


def limitations(c: Collected, ctx: Context, lang: str) -> list[str]:
    T = TEXT[lang]
    src = c.get("data") or c.get("train") or ctx.card_run  # the config the training data was made with
    mode = src.params.get("data.tool_results")
    out = [f"### {T['limitations']}", "", f"- {T['lim_style']}"]
    if mode == "execute":
        out.append("- " + T["lim_execute"].format(judge=T["lim_execute_judge"] if _true(src, "data.judge") else "")
                   + f" {src.ref}")
    elif mode is not None:
        out.append(f"- {T['lim_simulate']} {src.ref}")
    else:
        out.append(f"- {T['tools']}: {ctx.param(src, 'data.tool_results', lang)} {src.ref}")
    if _true(src, "model.embedded"):
        out.append("- " + T["lim_tiny"].format(model=ctx.param(src, "model.name", lang)) + f" {src.ref}")
    return out + [""]


def files_section(c: Collected, ctx: Context, lang: str) -> list[str]:
    T = TEXT[lang]
    out = [f"### {T['files']}", ""]
    if c.get("merge"):
        out.append(f"- `merge/model/` — {T['f_merged']}")
    q = c.get("quant")
    for key, info in (QuantResults.from_dict(artifact_json(q, QuantOutputs.RESULTS_ARTIFACT)).files if q else {}).items():
        name = Path(str(info.get("path", key))).name  # the file's name only: no path of the machine that built it
        out.append(f"- `{name}` — " + (T["f_gguf"] if name.endswith(".gguf") else T["f_dir"]))
    if ctx.plots:
        out.append(f"- {', '.join(f'`{n}`' for n in ctx.plots)} — {T['f_plots']}")
    return out + [""]


def inference(c: Collected, ctx: Context, lang: str) -> list[str]:
    T, cr = TEXT[lang], ctx.card_run
    oo = ctx.onoff(cr, "eval.thinking", lang)
    out = [f"### {T['inference']}", "",
           T["inference_lead"].format(thinking=oo, temperature=ctx.param(cr, "eval.temperature", lang),
                                      top_p=ctx.param(cr, "eval.top_p", lang), ref=cr.ref), ""]
    names = {"llama_cpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang"}
    for backend, cmd in ctx.commands.items():
        out += [f"{names.get(backend, backend)}:", "", "```bash", cmd, "```", ""]
    if ctx.release_note.get(lang) and {"vllm", "sglang"} & set(ctx.commands):
        out += [ctx.release_note[lang], ""]
    return out


def sources(c: Collected, ctx: Context, lang: str) -> list[str]:
    T = TEXT[lang]
    out = [f"### {T['sources']}", "", T["sources_lead"].format(parent=c.parent.run_id), ""]
    for run in [*c.stages.values(), ctx.card_run]:
        code = run.tags.get("cardforge.code_version")
        line = (f"- `{run.run_id[:8]}` — `{run.stage}`, run `{run.run_id}`, commit "
                f"`{run.tags.get('git.commit', '?')[:12]}` (dirty `{run.tags.get('git.dirty', '?')}`), "
                f"config hash `{run.tags.get('cardforge.config_hash', '?')}`"
                + (f", code `{code}`" if code else ""))
        out.append(line + (f" ({T['reused']})" if run.reused else ""))
    return out + [""]


def artifact_json(run: StageRun | None, artifact: str) -> dict:
    if run is None or artifact not in run.files:
        return {}
    try:
        return json.loads(run.files[artifact].read_text())
    except (OSError, ValueError):
        return {}


SECTIONS = (training, None, evaluation, mtp, mtp_head, quant, protocol, limitations, files_section, inference, sources)


def _steps(c: Collected, lang: str) -> str:
    """What happened after training, as far as this invocation's runs show: merge, MTP head, quantization."""
    T, out = TEXT[lang], ""
    if (m := c.get("merge")) is not None:
        out += T["step_merged"]
        if c.get("mtp") is not None:
            out += T["step_mtp_retrained"]
        elif m.metrics.get("merge/mtp_tensors"):
            out += T["step_mtp_kept"]
    if c.get("quant") is not None:
        out += T["step_quant"]
    return out


def render_marked(c: Collected, ctx: Context) -> str:
    base = param(c.get("train") or ctx.card_run, "model.name")
    head = ["---", f"license: {ctx.license}", "tags: [lora, distillation, mtp, gguf, cardforge]", "---", "",
            f"# {ctx.title}", "",
            " · ".join(TEXT[lang]["lang"] for lang in ctx.languages), "",
            f"Generated by cardforge from pipeline run `{c.parent.run_id}` (experiment `{ctx.experiment}`, "
            f"commit `{c.parent.tags.get('git.commit', '?')[:12]}`).", ""]
    for lang in ctx.languages:
        src = c.get("data") or c.get("train") or ctx.card_run
        intro = TEXT[lang]["intro"].format(title=ctx.title, base=base, teacher=param(src, "teacher.model"),
                                           thinking=onoff(param(src, "teacher.thinking"), lang),
                                           steps=_steps(c, lang))
        head += [f"## {TEXT[lang]['lang']}", "", intro, ""]
        for section in SECTIONS:
            head += attribution(ctx, lang) if section is None else section(c, ctx, lang)
    return "\n".join(head).rstrip() + "\n"


def render_with_values(c: Collected, ctx: Context) -> tuple[str, list[dict[str, Any]]]:
    """The card's Markdown and the ledger of every value it prints (line, columns, run, kind, key, format)."""
    ctx.ledger = []
    return finalize(render_marked(c, ctx), ctx.ledger)


def render(c: Collected, ctx: Context) -> str:
    return render_with_values(c, ctx)[0]
