"""Markdown for the card: one section per language, the same tables under translated headings.

Rules the audit test holds this module to: every measured number is printed from a run's metrics or params
(never computed here beyond unit scaling, ×100 for percentages), and every line or table row that prints one
ends with the `[run xxxxxxxx]` of the run holding it. A stage without a run renders "not measured".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardforge.card.collect import Collected, StageRun, mtp_rows, quant_files, suite_stats
from cardforge.card.plots import DELTA_PLOT
from cardforge.card.text import TEXT

WHAT = {"en": {"eval": "accuracy metrics", "mtp": "MTP bench metrics", "quant": "per-file metrics"},
        "zh": {"eval": "准确率指标", "mtp": "MTP 测速指标", "quant": "各文件指标"}}
ON_OFF = {"en": {"true": "on", "false": "off"}, "zh": {"true": "开", "false": "关"}}


@dataclass
class Context:
    """What a section needs besides the runs."""

    title: str
    experiment: str
    card_run: StageRun  # holds the card's own resolved config (params) for config-only numbers
    attribution: list[dict[str, Any]]
    languages: list[str]
    commands: dict[str, str] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    license: str = "apache-2.0"


# --- formatting: display only, the value is the logged one ---

def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def num(v: float | None, spec: str = "g") -> str:
    if v is None:
        return "—"
    return str(int(v)) if spec == "int" else format(v, spec)


def p_value(v: float) -> str:
    return f"{v:.4f}" if v >= 1e-4 else f"{v:.1e}"


def onoff(v: Any, lang: str) -> str:
    return ON_OFF[lang].get(str(v).lower(), str(v))


def param(run: StageRun, key: str, default: str = "—") -> str:
    return run.params.get(key, default)


def not_measured(stage: str, c: Collected, ctx: Context, lang: str) -> str:
    return TEXT[lang]["not_measured"].format(stage=stage, parent=c.parent.run_id[:8], experiment=ctx.experiment)


# --- sections ---

def training(c: Collected, ctx: Context, lang: str) -> list[str]:
    t, T = c.get("train"), TEXT[lang]
    out = [f"### {T['training']}", ""]
    if t is None:
        return out + [not_measured("train", c, ctx, lang), ""]
    d, m = c.get("data"), c.get("merge")
    targets = ", ".join(f"`{x}`" for x in json.loads(param(t, "lora.target_modules", "[]")))
    matched = t.tags.get("train.lora_targets")
    used = t.tags.get("train.optimizer")
    opt = f"`{param(t, 'trainer.optimizer')}`" + (f" (→ `{used}`)" if used and used != param(t, "trainer.optimizer")
                                                    else "")
    out += [
        f"- **{T['base']}**: `{param(t, 'model.name')}` (`{param(t, 'model.path')}`, arch `{param(t, 'model.arch')}`)",
        f"- **{T['method']}**: LoRA, r = {param(t, 'lora.r')}, α = {param(t, 'lora.lora_alpha')}, dropout = "
        f"{param(t, 'lora.lora_dropout')}, targets = {targets}" + (f" (`{matched}`)" if matched else "") + f" {t.ref}",
        f"- **{T['optim']}**: {opt}, lr {param(t, 'trainer.lr')}, weight decay {param(t, 'trainer.weight_decay')}, "
        f"`{param(t, 'trainer.scheduler')}`, warmup ratio {param(t, 'trainer.warmup_ratio')}, batch "
        f"{param(t, 'trainer.batch_size')} × grad accum {param(t, 'trainer.grad_accum')}, "
        f"`{param(t, 'trainer.precision')}` {t.ref}",
        f"- **{T['length']}**: max_epochs {param(t, 'trainer.max_epochs')}, max_steps "
        f"{param(t, 'trainer.max_steps')} {t.ref}",
    ]
    if "train/final_loss" in t.metrics:
        out.append(f"- **{T['loss']}**: {T['final']} {num(t.metrics['train/final_loss'], '.4f')}, "
                   f"{num(t.metrics.get('train/tokens_per_s_mean'), '.1f')} tokens/s, "
                   f"{num(t.metrics.get('train/wall_s'), '.1f')} s {t.ref}")
    src = d or t
    out.append(f"- **{T['teacher']}**: `{param(src, 'teacher.model')}` (thinking "
               f"{onoff(param(src, 'teacher.thinking'), lang)}, temperature {param(src, 'teacher.temperature')}, "
               f"top_p {param(src, 'teacher.top_p')}) {src.ref}")
    if d is not None and "data.accepted" in d.metrics:
        dm = d.metrics
        line = (f"- **{T['data']}**: `{param(d, 'data.name')}`, {num(dm['data.accepted'], 'int')} / "
                f"{num(dm.get('data.samples'), 'int')} {T['accepted']} ({pct(dm.get('data.acceptance_rate', 0.0))})")
        if "data.tokens.trained_fraction" in dm:
            line += f", {T['trained_tokens']} {pct(dm['data.tokens.trained_fraction'])}"
        out.append(f"{line}, max_seq_len {param(d, 'data.max_seq_len')} {d.ref}")
    else:
        out.append(f"- **{T['data']}**: `{param(t, 'data.name')}`, data.num_samples = {param(t, 'data.num_samples')} "
                   f"{t.ref}; " + not_measured("data", c, ctx, lang).lstrip("> "))
    mode = param(src, "data.tool_results", "simulate")
    judge = T["judge_on"] if param(src, "data.judge", "False").lower() == "true" else ""
    out.append(f"- **{T['tools']}**: " + (T["tools_execute"].format(judge=judge) if mode == "execute"
                                          else T["tools_simulate"]))
    if m is not None and "merge/mtp_tensors" in m.metrics:
        out.append(f"- **{T['merge']}**: BF16 safetensors, MTP tensors {num(m.metrics['merge/mtp_tensors'], 'int')} "
                   f"(manifest match `{m.tags.get('merge.mtp_manifest_match', '?')}`) {m.ref}")
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


def evaluation(c: Collected, ctx: Context, lang: str) -> list[str]:
    ev, T = c.get("eval"), TEXT[lang]
    out = [f"### {T['evaluation']}", ""]
    if ev is None:
        return out + [not_measured("eval", c, ctx, lang), ""]
    suites = suite_stats(ev)
    if not suites:
        return out + [T["no_rows"].format(stage="eval", run=ev.run_id[:8], what=WHAT[lang]["eval"]), ""]
    out += [T["eval_lead"], "", T["acc_head"], "|---|---|---|---|---|---|"]
    for suite, per in suites.items():
        cells = []
        for label in ("distill", "base"):
            s = per.get(label)
            cells.append("—" if s is None else f"{pct(s['accuracy'])} [{pct(s['ci95_low'])}, {pct(s['ci95_high'])}] "
                                               f"({num(s['correct'], 'int')}/{num(s['n'], 'int')})")
        d = per.get("delta")
        if d:
            cells.append(f"{100 * d['delta']:+.1f} pp [{100 * d['ci95_low']:+.1f}, {100 * d['ci95_high']:+.1f}] "
                         f"({num(d['n'], 'int')} {T['paired']})")
            cells.append(p_value(d["mcnemar_p"]))
        else:
            cells += ["—", "—"]
        out.append(f"| {suite} | " + " | ".join(cells) + f" | {ev.ref} |")
    out += ["", f"{T['finish']}:", "", T["fin_head"], "|---|---|---|---|---|---|---|---|"]
    for suite, per in suites.items():
        for label in ("distill", "base"):
            if (s := per.get(label)) is None:
                continue
            vals = [num(s.get(f"finish_{k}"), "int") for k in ("stop", "length", "error", "other")]
            vals += [num(s.get("parse_fail"), "int"), num(s.get("median_completion_tokens"), "g")]
            out.append(f"| {suite} · {label} | " + " | ".join(vals) + f" | {ev.ref} |")
    summary = artifact_json(ev, "eval/summary.json")
    for suite in suites:
        if (summary.get("suites", {}).get(suite) or {}).get("note"):  # the eval stage flags smoke sets
            out += ["", T["smoke"].format(suite=suite)]
    if DELTA_PLOT in ctx.plots:
        out += ["", f"![{T['delta_plot']}]({DELTA_PLOT})"]
    return out + [""]


def _mtp_row(r: dict, label: str, ref: str) -> str:
    speed = "—" if r.get("speedup") is None else f"{r['speedup']:.2f}×"
    return (f"| `{label}` · {r['prompt_type']} · {r['n_max'] or 'off'} | {num(r.get('tok_s_median'), '.1f')} "
            f"| {speed} | {num(r.get('accept_rate'), '.3f')} | {num(r.get('mean_accept_len'), '.2f')} | {ref} |")


def mtp(c: Collected, ctx: Context, lang: str) -> list[str]:
    ev, T = c.get("eval"), TEXT[lang]
    out = [f"### {T['mtp']}", ""]
    if ev is None:
        return out + [not_measured("eval", c, ctx, lang), ""]
    rows = mtp_rows(ev)
    if not rows:
        return out + [T["no_rows"].format(stage="eval", run=ev.run_id[:8], what=WHAT[lang]["mtp"]), ""]
    out += [T["mtp_lead"], "", T["mtp_head"], "|---|---|---|---|---|---|"]
    out += [_mtp_row(r, r["tier"], ev.ref) for r in rows]
    if "mtp_bench.png" in ctx.plots:
        out += ["", f"![{T['mtp_plot']}](mtp_bench.png)"]
    return out + [""]


def mtp_head(c: Collected, ctx: Context, lang: str) -> list[str]:
    """The retrained MTP head vs the grafted one: offline (held-out prompts) and online (llama-server)."""
    run, T = c.get("mtp"), TEXT[lang]
    if run is None:
        return []
    out = [f"### {T['mtp_retrain']}", "", T["mtp_retrain_lead"].format(
        steps=run.params.get("mtp.steps", "?"), prompts=run.params.get("mtp.num_prompts", "?"),
        n=run.params.get("mtp.n_max", "?"), ref=run.ref), "", T["mtp_offline_head"], "|---|---|---|---|---|"]
    n = run.params.get("mtp.n_max", "?")
    for head in ("grafted", "retrained"):
        g = lambda k: run.metrics.get(f"mtp.offline.{head}.{k}")  # noqa: E731
        out.append(f"| {head} | {num(g('step1_acc'), '.3f')} | {num(g('accept_rate'), '.3f')} (n-max {n}) "
                   f"| {num(g('mean_accept_len'), '.2f')} | {run.ref} |")
    rows = [r for r in mtp_rows(run) if r["tier"].startswith("online.")]
    if rows:
        out += ["", T["mtp_online_lead"], "", T["mtp_head"], "|---|---|---|---|---|---|"]
        out += [_mtp_row(r, r["tier"].removeprefix("online."), run.ref) for r in rows]
    return out + [""]


def _bench_for(key: str, path: str | None, rows: list[dict], n: int) -> dict | None:
    """The bench row (coding prompts, n-max n) measured on this quant file, matched by file stem or tier suffix."""
    stem = Path(path).stem if path else None
    mine = [r for r in rows if r["tier"] in (key, stem) or r["tier"].endswith("-" + key)]
    pick = [r for r in mine if r["n_max"] == n]
    return next((r for r in pick if r["prompt_type"] == "coding"), pick[0] if pick else None)


def quant(c: Collected, ctx: Context, lang: str) -> list[str]:
    q, ev, T = c.get("quant"), c.get("eval"), TEXT[lang]
    out = [f"### {T['quant']}", ""]
    if q is None:
        return out + [not_measured("quant", c, ctx, lang), ""]
    files = quant_files(q)
    if not files:
        return out + [T["no_rows"].format(stage="quant", run=q.run_id[:8], what=WHAT[lang]["quant"]), ""]
    listed = artifact_json(q, "quant/quant_results.json").get("files", {})
    order = [k for k in listed if k in files] + sorted(k for k in files if k not in listed)
    rows = mtp_rows(ev) if ev else []
    bench_n = sorted({r["n_max"] for r in rows if r["n_max"]})
    n = int(ev.params.get("serve.mtp.n_max", 0) or 0) if ev else 0
    if bench_n and n not in bench_n:
        n = bench_n[-1]
    if rows:
        # the quant stage says whether its KLD text was truly held out (a small data set cannot spare any)
        held = q.tags.get("quant.kld_on", "held-out text").startswith("held-out")
        kld_on = {"en": "held-out text" if held else "the calibration text (too few texts to hold any out)",
                  "zh": "留出文本" if held else "校准文本(文本太少,无法留出)"}[lang]
        out += [T["quant_lead"].format(n=n, ref=ev.ref, kld_on=kld_on), ""]
    out += [T["quant_head"], "|---|---|---|---|---|---|---|---|---|---|"]
    for key in order:
        f = files[key]
        on = _bench_for(key, listed.get(key, {}).get("path"), rows, n) if rows else None
        off = _bench_for(key, listed.get(key, {}).get("path"), rows, 0) if on else None
        speed = "—" if not on or on.get("speedup") is None else f"{on['speedup']:.2f}×"
        refs = q.ref + (f" {ev.ref}" if on else "")
        out.append(f"| `{key}` | {num(f.get('GB'))} | {num(f.get('GiB'))} | {num(f.get('kld_mean'), '.5f')} | "
                   f"{num(f.get('ppl'), '.3f')} | {num((off or {}).get('tok_s_median'), '.1f')} | "
                   f"{num((on or {}).get('tok_s_median'), '.1f')} | {speed} | {num((on or {}).get('accept_rate'), '.3f')}"
                   f" | {refs} |")
    out += ["", T["gib"]]
    sized = [k for k in order if "GB" in files[k] and "GiB" in files[k] and not k.startswith(("BF16", "base:"))]
    # the file the MTP columns measured (the one the card recommends), else the first quantized one
    ex = next((k for k in sized if _bench_for(k, listed.get(k, {}).get("path"), rows, n)), sized[0] if sized else None)
    if ex:
        out.append(T["gib_example"].format(key=ex, gb=num(files[ex]["GB"]), gib=num(files[ex]["GiB"]), ref=q.ref))
    return out + [""]


def protocol(c: Collected, ctx: Context, lang: str) -> list[str]:
    ev, T = c.get("eval"), TEXT[lang]
    out = [f"### {T['protocol']}", ""]
    if ev is None:
        return out + [not_measured("eval", c, ctx, lang), ""]
    p = {k: param(ev, f"eval.{k}") for k in ("temperature", "top_p", "max_tokens", "concurrency", "seed")}
    return out + [T["protocol_text"].format(thinking=onoff(param(ev, "eval.thinking"), lang),
                                            stream=onoff(param(ev, "eval.stream"), lang),
                                            timeout=param(ev, "eval.timeout_s"), ref=ev.ref, **p), ""]


def limitations(c: Collected, ctx: Context, lang: str) -> list[str]:
    T = TEXT[lang]
    src = c.get("data") or c.get("train") or ctx.card_run  # the config the training data was made with
    mode = param(src, "data.tool_results", "simulate")
    judge = param(src, "data.judge", "False").lower() == "true"
    out = [f"### {T['limitations']}", "", f"- {T['lim_style']}"]
    if mode == "execute":
        out.append("- " + T["lim_execute"].format(judge=T["lim_execute_judge"] if judge else ""))
    else:
        out.append(f"- {T['lim_simulate']}")
    if param(src, "model.embedded", "False").lower() == "true":
        out.append("- " + T["lim_tiny"].format(model=param(src, "model.name")))
    return out + [""]


def files_section(c: Collected, ctx: Context, lang: str) -> list[str]:
    T = TEXT[lang]
    out = [f"### {T['files']}", ""]
    if c.get("merge"):
        out.append(f"- `merge/model/` — {T['f_merged']}")
    q = c.get("quant")
    for key, info in (artifact_json(q, "quant/quant_results.json").get("files", {}) if q else {}).items():
        name = Path(str(info.get("path", key))).name
        out.append(f"- `{name}` — " + (T["f_gguf"] if name.endswith(".gguf") else T["f_dir"]))
    if ctx.plots:
        out.append(f"- {', '.join(f'`{n}`' for n in ctx.plots)} — {T['f_plots']}")
    return out + [""]


def inference(c: Collected, ctx: Context, lang: str) -> list[str]:
    T, cr = TEXT[lang], ctx.card_run
    out = [f"### {T['inference']}", "",
           T["inference_lead"].format(thinking=onoff(param(cr, "eval.thinking"), lang),
                                      temperature=param(cr, "eval.temperature"), top_p=param(cr, "eval.top_p"),
                                      ref=cr.ref), ""]
    names = {"llama_cpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang"}
    for backend, cmd in ctx.commands.items():
        out += [f"{names.get(backend, backend)}:", "", "```bash", cmd, "```", ""]
    return out


def sources(c: Collected, ctx: Context, lang: str) -> list[str]:
    T = TEXT[lang]
    out = [f"### {T['sources']}", "", T["sources_lead"].format(parent=c.parent.run_id), ""]
    for run in [*c.stages.values(), ctx.card_run]:
        line = (f"- `{run.run_id[:8]}` — `{run.stage}`, run `{run.run_id}`, commit "
                f"`{run.tags.get('git.commit', '?')[:12]}`, config hash `{run.tags.get('cardforge.config_hash', '?')}`")
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


def render(c: Collected, ctx: Context) -> str:
    base = param(c.get("train") or ctx.card_run, "model.name")
    head = ["---", f"license: {ctx.license}", "tags: [lora, distillation, mtp, gguf, cardforge]", "---", "",
            f"# {ctx.title}", "",
            " · ".join(TEXT[lang]["lang"] for lang in ctx.languages), "",
            f"Generated by cardforge from pipeline run `{c.parent.run_id}` (experiment `{ctx.experiment}`, "
            f"commit `{c.parent.tags.get('git.commit', '?')[:12]}`).", ""]
    for lang in ctx.languages:
        src = c.get("data") or c.get("train") or ctx.card_run
        intro = TEXT[lang]["intro"].format(title=ctx.title, base=base, teacher=param(src, "teacher.model"),
                                           thinking=onoff(param(src, "teacher.thinking"), lang))
        head += [f"## {TEXT[lang]['lang']}", "", intro, ""]
        for section in SECTIONS:
            head += attribution(ctx, lang) if section is None else section(c, ctx, lang)
    return "\n".join(head).rstrip() + "\n"
