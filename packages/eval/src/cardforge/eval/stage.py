"""The eval stage: `python -m cardforge.eval [overrides]` -> run(cfg).

1. What to evaluate: `eval.endpoint` (a running OpenAI-compatible server) or `eval.distill_model` (a GGUF;
   default: the quant stage's eval.quant_tier GGUF), and with eval.compare_base the base model the same
   way (`eval.base_endpoint` / `eval.base_model`, default: the quant stage's base model at the distilled file's
   format (tier + imatrix, read from the GGUF header), else that GGUF built here from the base checkpoint with
   the quant stage's code and imatrix; where it cannot be built, a one-line error naming the keys; never a
   silent BF16 base). Each model's format is tagged (`eval.<label>.format`). A GGUF is served by
   llama-server (cardforge.serve) with MTP off and eval.concurrency slots, as the card's accuracy runs were.
2. Each suite in eval.suites (benchmarks/) through the streaming harness: records in
   <outputs>/eval/<label>/<suite>.jsonl (resumable), then statistics (stats.py) per model and paired
   distill-vs-base, and eval.lm_eval_tasks through the `cardforge-stream` lm-eval model.
3. MTP speed bench (mtp_bench.py) when the model has an MTP head and eval.mtp_n_max is not empty, over
   eval.bench_models (a GGUF path, or "quant:<TIER>" = that tier from the quant stage's results).
Everything goes to MLflow (metrics, summary.json, eval_table.md, the per-question JSONL, the bench plot).

Resume is keyed by the served model too (model_id(): the GGUF's sha256), so a rebuilt model is asked every
question again instead of inheriting the old build's answers. The harness always streams (SSE):
eval.stream=false is refused (options()).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from cardforge.core import tracking
from cardforge.core.artifacts import EvalOutputs, Outputs, Tier
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_json, atomic_write_text, preflight_output, sha256_file
from cardforge.eval import benchmarks, stats
from cardforge.agent.client import Sampling
from cardforge.eval.harness import HarnessOptions, run_questions

CHANCE = {"gpqa_diamond": 0.25, "mmlu": 0.25}
PASS_AT_1 = {"humaneval", "coding"}  # suites whose accuracy is also logged as pass_at_1 (per language too)


@dataclass
class Target:
    label: str  # distill | base
    gguf: Path | None = None
    endpoint: str | None = None

    @property
    def format(self) -> str:
        """What the card compares at: "<tier>[-imatrix]" read from the GGUF header, or "endpoint"."""
        return gguf_format(self.gguf) if self.gguf else "endpoint"


def gguf_format(path: Path) -> str:
    """A GGUF's format from its own header: llama.cpp's general.file_type (Q4_K_M, Q8_0, BF16, ...) and
    "-imatrix" when llama-quantize recorded an importance matrix."""
    from cardforge.core.llama_cpp import gguf_header

    kv = gguf_header(path, max_array=0)["kv"]
    ft = kv.get("general.file_type")
    try:
        from gguf import LlamaFileType

        name = LlamaFileType(int(ft)).name.removeprefix("MOSTLY_") if ft is not None else "unknown"
    except (ImportError, ValueError):
        name = f"file_type {ft}"
    return Tier(name, any(k.startswith("quantize.imatrix") for k in kv)).key


@dataclass
class _BaseBuild:
    """What _base_at builds when there is no base file at the distilled model's format yet."""
    src: Path  # the base checkpoint
    bf16: Path  # its BF16 GGUF (kept: in the cache for embedded bases, else under <outputs>/eval/base-gguf)
    out: Path  # the file at the format
    want: Tier
    imatrix: Path | None


def _base_plan(cfg: DictConfig, fmt: str, out_dir: Path) -> tuple[Path, _BaseBuild | None]:
    """The base model's GGUF at `fmt` and, when it must be built, what _base_at builds; one line where it
    cannot be built."""
    want = Tier.parse(fmt)
    tier, imat = want.name, want.imatrix
    quant = Outputs(cfg).quant
    hit = quant.results().gguf(want, base=True)
    if hit and hit[1].is_file() and gguf_format(hit[1]) == fmt:
        return hit[1], None
    fix = (f"set quant.base_tiers=[{{tier: {tier}, imatrix: {str(imat).lower()}}}] and rerun quant, or "
           "eval.base_model=PATH.gguf / eval.base_endpoint=URL, or eval.compare_base=false")
    try:
        from cardforge.quant import gguf as qgguf
        from cardforge.quant.stage import base_gguf_cache, base_model_dir
    except ImportError:
        raise UserError(f"eval.compare_base: the base must be served as {fmt} like the distilled model, and "
                        f"building it needs cardforge-quant (pip install -e packages/quant); or {fix}") from None
    if tier not in qgguf.KNOWN_TIERS and tier != "BF16":
        raise UserError(f"eval.compare_base: the distilled model is {fmt}, a format cardforge cannot build for "
                        f"the base; {fix}")
    imatrix = quant.imatrix
    if imat and not imatrix.is_file():
        raise UserError(f"eval.compare_base: the distilled model is {fmt} but the quant stage's imatrix "
                        f"({imatrix}) is missing, so the base cannot be quantized the same way; {fix}")
    src = base_model_dir(cfg)  # one line when the base checkpoint is not on disk
    gdir = EvalOutputs(out_dir).base_gguf_dir
    # the files are named by what they are built from (the checkpoint's files, the imatrix, llama.cpp), so a new
    # base checkpoint or a re-made imatrix builds anew instead of reusing a stale file of the same format
    source = _base_source_key(src)
    name = f"{cfg.model.name}-base-{source}"
    out = gdir / f"{name}{f'-im{sha256_file(imatrix)[:8]}' if imat else ''}-{fmt}.gguf"
    if out.is_file():
        return out, None
    bf16 = base_gguf_cache(cfg, src) or gdir / f"{name}-BF16.gguf"
    if tier == "BF16" and bf16.is_file():
        return bf16, None
    return (bf16 if tier == "BF16" else out), _BaseBuild(src, bf16, out, want, imatrix if imat else None)


def _base_at(cfg: DictConfig, fmt: str, out_dir: Path) -> Path:
    """The base model's GGUF at `fmt` (the distilled file's format): the quant stage's base file when it has
    one, else built here from the base checkpoint with the quant stage's converter and llama-quantize (and its
    imatrix when `fmt` has one). Quantizing is cheap next to an eval; where it cannot be done, one line says
    which keys fix it."""
    path, build = _base_plan(cfg, fmt, out_dir)
    if build is None:
        return path
    from cardforge.quant import gguf as qgguf

    build.out.parent.mkdir(parents=True, exist_ok=True)
    if not build.bf16.is_file():
        _say(f"base: converting {build.src} to BF16 GGUF (the base is served as {fmt}, like the distilled model)")
        tmp = build.bf16.with_name(f".{build.bf16.name}.tmp")
        qgguf.convert(build.src, tmp)
        tmp.replace(build.bf16)
    if build.want.name == "BF16":
        return build.bf16
    _say(f"base: quantizing to {fmt}")
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    return qgguf.quantize(build.bf16, build.out, build.want, build.imatrix, threads,
                          out_dir / "logs" / f"quantize-base-{fmt}.log")


RECORDS_BYTES = 64 << 20  # records, transcripts and tables: a card's full eval writes a few MB


def _base_build(cfg: DictConfig) -> _BaseBuild | None:
    """The base GGUF targets(cfg) would build; None when the base is served from a file or an endpoint, or cannot
    be planned (targets() then says why in one line)."""
    ev = cfg.eval
    if not ev.compare_base or ev.endpoint or ev.base_endpoint or ev.base_model:
        return None
    gguf = Path(ev.distill_model) if ev.distill_model else _quant_gguf(cfg)
    if gguf is None or not gguf.is_file():
        return None
    try:
        return _base_plan(cfg, gguf_format(gguf), Outputs(cfg).eval.dir)[1]
    except (UserError, OSError, ValueError):
        return None


def disk_need(cfg: DictConfig, out_dir: Path) -> list[tuple[Path, int, str, str]]:
    """(folder, bytes, what they are, the key that moves it) for each folder the stage writes to: <outputs>/eval
    takes the records, transcripts and tables (RECORDS_BYTES) and, with eval.compare_base and no base GGUF at the
    distilled model's format to serve (the quant stage's, eval.base_model, or one built by an earlier run), what
    _base_at builds for eval.quant_tier and each of eval.tiers: the file at that format and the base checkpoint's
    BF16 GGUF it is quantized from (kept in the cache for embedded bases: CARDFORGE_CACHE), sized from the
    checkpoint's tensor shapes (cardforge.quant.sizes)."""
    from cardforge.quant import sizes

    tiers = [OmegaConf.merge(cfg, {"eval": {"quant_tier": str(t), "tiers": []}}) for t in cfg.eval.tiers]
    need: dict[Path, list] = {out_dir: [RECORDS_BYTES, ["the records"], "paths.outputs"]}
    seen: set[Path] = set()
    for b in (b for b in map(_base_build, [cfg, *tiers]) if b is not None):
        inv, vocab = sizes.checkpoint_inventory(b.src), sizes.tokenizer_bytes(b.src)
        if b.bf16 not in seen and not b.bf16.is_file():
            inside = b.bf16.is_relative_to(out_dir)
            entry = need.setdefault(out_dir if inside else b.bf16.parent, [0, [], "CARDFORGE_CACHE"])
            entry[0] += sizes.gguf_bytes(inv, "BF16", vocab)
            entry[1].append("the base's BF16 GGUF (eval.compare_base)")
        if b.out not in seen and b.want.name != "BF16":
            need[out_dir][0] += sizes.gguf_bytes(inv, b.want.name, vocab)
            need[out_dir][1].append(f"the base as {b.want.key} (eval.compare_base)")
        seen |= {b.bf16, b.out}
    return [(d, n, " + ".join(what), key) for d, (n, what, key) in need.items()]


def _base_source_key(src: Path) -> str:
    """12 hex digits over the llama.cpp release and the base checkpoint's path and files (name, size, mtime)."""
    import hashlib

    from cardforge.core import llama_cpp

    h = hashlib.sha256(f"{llama_cpp.VERSION}\n{Path(src).resolve()}".encode())
    for f in sorted(p for p in Path(src).iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"\n{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


@dataclass
class EvalResult:
    summary: dict[str, Any]
    out_dir: Path
    records: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # label -> suite -> records
    bench: list[dict] = field(default_factory=list)


def _say(msg: str) -> None:
    print(f"cardforge eval: {msg}", file=sys.stderr, flush=True)


def _quant_file(cfg: DictConfig, tier: str) -> tuple[str, Path] | None:
    """(quant_results key, GGUF) of the quant stage's `tier` (imatrix preferred)."""
    return Outputs(cfg).quant.results().gguf(tier)


def _quant_gguf(cfg: DictConfig, base: bool = False) -> Path | None:
    """The quant stage's GGUF at eval.quant_tier (imatrix preferred); `base`: the base model's."""
    hit = Outputs(cfg).quant.results().gguf(str(cfg.eval.quant_tier), base=base)
    return hit[1] if hit else None


def targets(cfg: DictConfig) -> list[Target]:
    ev = cfg.eval
    if ev.endpoint:
        out = [Target("distill", endpoint=str(ev.endpoint))]
    else:
        gguf = Path(ev.distill_model) if ev.distill_model else _quant_gguf(cfg)
        if gguf is None or not gguf.is_file():
            raise UserError(f"no distilled model to evaluate ({gguf or 'no quant_results.json'}): set "
                            "eval.distill_model=PATH.gguf or eval.endpoint=URL, or run the quant stage first")
        out = [Target("distill", gguf=gguf)]
    if ev.compare_base:
        if ev.base_endpoint:
            out.append(Target("base", endpoint=str(ev.base_endpoint)))
        elif ev.base_model:
            if not Path(ev.base_model).is_file():
                raise UserError(f"eval.base_model={ev.base_model}: no such GGUF file")
            out.append(Target("base", gguf=Path(ev.base_model)))
        elif out[0].gguf is not None:
            # the base at the distilled file's own format (same tier, same imatrix), found or built
            out.append(Target("base", gguf=_base_at(cfg, out[0].format, Outputs(cfg).eval.dir)))
        else:
            raise UserError("eval.compare_base with eval.endpoint: the base must be served the same way; set "
                            "eval.base_endpoint=URL (or eval.base_model=PATH.gguf), or eval.compare_base=false")
    return out


def serve_dict(cfg: DictConfig) -> dict[str, Any]:
    serve = OmegaConf.to_container(cfg.serve, resolve=True, enum_to_str=True)
    serve["served_model_name"] = None  # named after the GGUF file
    serve["model_path"] = None
    return serve


@contextlib.contextmanager
def serving(t: Target, cfg: DictConfig, log_dir: Path) -> Iterator[str]:
    if t.endpoint:
        yield t.endpoint
        return
    from cardforge.serve.launchers.llama_cpp import llama_server

    serve = serve_dict(cfg)
    serve["mtp"] = {**serve["mtp"], "enabled": False}  # accuracy runs: concurrent, speculation off (the card)
    n = int(cfg.eval.concurrency)
    # llama-server splits -c over its slots: give each slot the configured context
    extra = ["--parallel", str(n), "-c", str(int(serve["ctx_size"]) * n)]
    with llama_server(t.gguf, serve, extra_args=extra, log_path=log_dir / f"{t.label}-server.log") as srv:
        yield srv.base_url


def options(cfg: DictConfig, model_id: str | None = None) -> HarnessOptions:
    """The harness options of eval.*; `model_id` (model_id(target)) keys resume to the served model."""
    ev = cfg.eval
    if not bool(ev.stream):
        raise UserError("the harness streams (SSE): eval.stream=false is not supported. A non-streaming request "
                        "waits for the whole answer, so a long thought looks like a timeout, and finish_reason / "
                        "timings come from the stream (docs/evaluation.md); leave eval.stream=true")
    return HarnessOptions(Sampling(float(ev.temperature), float(ev.top_p), int(ev.max_tokens), int(ev.seed), (),
                                   bool(ev.thinking)),
                          concurrency=int(ev.concurrency), timeout_s=float(ev.timeout_s), idle_timeout_s=float(ev.idle_timeout_s),
                          retries=int(ev.retries),
                          model_id=model_id, progress=bool(ev.progress))


def gguf_id(path: Path, cache: Path | None = None) -> str:
    """"gguf-sha256:<hex>" of the whole file. Hashing runs at disk speed (~1-2 GB/s: seconds for the tiny
    models, about a minute for a 27B BF16 GGUF, against hours of eval), so it is the full sha256, not a
    sampled fingerprint. `cache` (a JSON file) remembers it per (path, size, mtime_ns, ctime_ns, inode): a
    rebuilt or rewritten file changes its ctime/inode (ctime cannot be set back), so it is hashed again."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    known: dict[str, str] = {}
    if cache is not None and cache.is_file():
        with contextlib.suppress(ValueError, OSError):
            known = json.loads(cache.read_text())
    if key not in known:
        known = {k: v for k, v in known.items() if not k.startswith(f"{p}|")}  # drop this file's old builds
        known[key] = "gguf-sha256:" + sha256_file(p)
        if cache is not None:
            atomic_write_json(cache, known)
    return known[key]


def model_id(t: Target, cache: Path | None = None) -> str:
    """The identity of what `t` serves, part of every record's resume key: a GGUF's sha256 (gguf_id), or for
    an endpoint the GGUF llama-server reports in /props when that file is on this machine; else the URL plus
    what the server says it serves (llama-server's /props model_path, or each /v1/models entry's id and root:
    vLLM and SGLang name the checkpoint there), so another model behind the same URL is asked again. Only a
    model rebuilt in place behind a remote endpoint under the same names stays invisible: change the URL or
    the records dir then."""
    if t.gguf is not None:
        return gguf_id(t.gguf, cache)
    import urllib.request

    base = str(t.endpoint).rstrip("/")

    def get(route: str) -> Any:
        with contextlib.suppress(Exception):
            with urllib.request.urlopen(base + route, timeout=10) as resp:
                return json.loads(resp.read())
        return None

    props = get("/props")
    path = props.get("model_path") if isinstance(props, dict) else None
    if path and Path(path).is_file():
        return gguf_id(Path(path), cache)
    if path:
        return f"endpoint:{t.endpoint}|model_path:{path}"
    models = get("/v1/models")
    data = models.get("data") if isinstance(models, dict) else None
    served = sorted(f"{m.get('id')}@{m.get('root') or ''}" for m in data or [] if isinstance(m, dict))
    if served:
        return f"endpoint:{t.endpoint}|models:{','.join(served)}"
    return f"endpoint:{t.endpoint}"


def _suite_metrics(label: str, suite: str, s: dict) -> dict[str, float]:
    m = {f"{label}.{suite}.{k}": float(v) for k, v in s.items() if isinstance(v, (int, float)) and v is not None}
    m.update({f"{label}.{suite}.finish_{k}": float(v) for k, v in s["finish"].items()})
    if suite.split(".")[0] in PASS_AT_1:  # one sample per problem: accuracy is pass@1, named so
        m[f"{label}.{suite}.pass_at_1"] = float(s["accuracy"])
    for group, gs in s.get("groups", {}).items():  # e.g. each BFCL set: <label>.bfcl.<set>.accuracy
        m.update(_suite_metrics(label, f"{suite}.{group}", gs))
    return m


def _row(suite: str, label: str, s: dict) -> str:
    f = s["finish"]
    return (f"| {suite} | {label} | {s['accuracy']:.1%} ({s['ci95_low']:.1%}–{s['ci95_high']:.1%}) | "
            f"{s['correct']}/{s['n']} | {f['stop']} / {f['length']} / {f['error']} | {s['parse_fail']} | "
            f"{s['median_completion_tokens']} |")


NOT_LABELS = ("delta", "note", "truncation")  # summary["suites"][suite] keys that are not a model's stats


def table(summary: dict) -> str:
    lines = ["| suite | model | accuracy (95% CI) | n | stop / length / error | parse fail | median tokens |",
             "|---|---|---|---|---|---|---|"]
    for suite, per in summary["suites"].items():
        for label, s in per.items():
            if label in NOT_LABELS:
                continue
            lines.append(_row(suite, label, s))
            lines += [_row(f"{suite}/{g}", label, gs) for g, gs in s.get("groups", {}).items()]
            if s.get("judge_n"):
                lines.append(f"| {suite} (LLM judge) | {label} | {s['judge_accuracy']:.1%} ({s['judge_ci95_low']:.1%}–"
                             f"{s['judge_ci95_high']:.1%}) | {s['judge_correct']}/{s['judge_n']} | agrees with the "
                             f"checker on {s['judge_agree']}/{s['judge_n']} | | |")
        if "delta" in per:
            d = per["delta"]
            lines.append(f"| {suite} | Δ distill−base | {d['delta']:+.1%} (paired bootstrap {d['ci95_low']:+.1%}–"
                         f"{d['ci95_high']:+.1%}) | {d['n']} paired | McNemar exact p = {d['mcnemar_p']:.3g} | | |")
        if per.get("note"):
            lines.append(f"\n{suite}: {per['note']}\n")
        if per.get("truncation") and per["truncation"] not in (per.get("note") or ""):
            lines.append(f"\n{suite}: {per['truncation']}\n")
    return "\n".join(lines) + "\n"


def truncation_note(per_label: dict[str, list[dict]], max_tokens: int) -> str | None:
    """"k of N answers truncated (finish_reason=length ...)" per model, or None when nothing was cut off.
    A truncated answer is never parsed (it scores as wrong): when every answer of a model was cut off its
    accuracy says nothing about the model, only about eval.max_tokens, and the note says so."""
    parts, useless = [], False
    for label, recs in per_label.items():
        k = sum(1 for r in recs if r.get("finish_reason") == "length")
        if k:
            parts.append(f"{label}: {k} of {len(recs)} answers truncated")
            useless |= k == len(recs)
    if not parts:
        return None
    why = ("accuracy is not meaningful (no answer reached its end, so none was parsed)" if useless else
           "truncated answers are never parsed and count as wrong")
    return f"{'; '.join(parts)} (finish_reason=length at eval.max_tokens={max_tokens}): {why}"


def _note(cfg: DictConfig, suite: str, n: int) -> str | None:
    mod = benchmarks.get(suite)
    if hasattr(mod, "note"):  # suites with their own data say what a partial run means
        return mod.note(cfg.eval, n)
    src = str(cfg.eval.get("gpqa_source" if suite == "gpqa_diamond" else "mmlu_source"))
    if "fixtures" in src or n < 50:
        return (f"smoke set ({n} self-written questions from {Path(src).name}, not the real benchmark): accuracy "
                f"near chance ({CHANCE.get(suite, 0):.0%}) is expected on tiny models; the CI shows how little "
                "n questions can tell")
    return None


def _run_suites(cfg: DictConfig, out_dir: Path, tlist: list[Target], root: str, prefix: str = "") -> tuple[dict, dict]:
    """Every suite on every target; MLflow keys start with `prefix` (eval.tiers: "tier.<TIER>.")."""
    import mlflow

    ev = cfg.eval
    suites = list(ev.suites)
    for s in suites:
        if s not in benchmarks.REGISTRY:
            raise UserError(f"eval.suites: unknown suite {s!r}; known: {sorted(benchmarks.REGISTRY)}")
    questions = {s: benchmarks.get(s).load(ev, root) for s in suites}
    records: dict[str, dict[str, list[dict]]] = {}
    lm_eval_results: dict[str, Any] = {}
    for t in tlist:
        mid = model_id(t, out_dir / "model_ids.json")  # part of the resume key: a rebuilt model is re-asked
        opts = options(cfg, mid)
        mlflow.set_tag(f"eval.{prefix}{t.label}.model_id", mid)
        _say(f"{t.label}: {t.endpoint or t.gguf} ({mid[:24]}…)")
        with serving(t, cfg, out_dir / "logs") as url:
            for s in suites:
                mod, path = benchmarks.get(s), out_dir / t.label / f"{s}.jsonl"
                if hasattr(mod, "run_suite"):  # multi-turn suites (agentic) drive the conversation themselves
                    got = mod.run_suite(questions[s], url, opts, path, label=t.label, suite=s, cfg=cfg)
                else:
                    got = run_questions(questions[s], url, mod.parse, opts, path, label=t.label, suite=s,
                                        **({"score": mod.score} if hasattr(mod, "score") else {}))
                records.setdefault(t.label, {})[s] = got
            if ev.lm_eval_tasks:
                from cardforge.eval import lm_eval_model

                margs = {"base_url": url, "records": str(out_dir / t.label / "lm_eval.jsonl"),
                         "max_tokens": ev.max_tokens, "temperature": ev.temperature, "top_p": ev.top_p,
                         "concurrency": ev.concurrency, "timeout_s": ev.timeout_s, "retries": ev.retries,
                         "thinking": ev.thinking, "seed": ev.seed, "progress": ev.progress, "model_id": mid}
                res = lm_eval_model.evaluate(list(ev.lm_eval_tasks), ev.lm_eval_include_path, margs, limit=ev.limit)
                lm_eval_results[t.label] = res.get("results", {})
                for task, vals in lm_eval_results[t.label].items():
                    for k, v in vals.items():
                        if isinstance(v, (int, float)):
                            mlflow.log_metric(f"{t.label}.lm_eval.{task}.{k.replace(',', '.')}", float(v))
    summary: dict[str, Any] = {"suites": {}, "lm_eval": lm_eval_results}
    for s in suites:
        per: dict[str, Any] = {}
        for label in records:
            per[label] = stats.summarize(records[label][s])
            mlflow.log_metrics({prefix + k: v for k, v in _suite_metrics(label, s, per[label]).items()})
        if "distill" in records and "base" in records:
            per["delta"] = stats.paired(records["distill"][s], records["base"][s], seed=int(ev.seed))
            mlflow.log_metrics({f"{prefix}delta.{s}.{k}": float(v) for k, v in per["delta"].items()})
        per["note"] = _note(cfg, s, len(questions[s]))
        if per["note"]:  # the suite's own words, for the card (it never writes its own)
            mlflow.set_tag(f"eval.{s}.note", per["note"])
        per["truncation"] = truncation_note({label: records[label][s] for label in records}, int(ev.max_tokens))
        if per["truncation"]:
            if per["note"]:  # the smoke-set note says what else the numbers cannot show
                per["note"] = f"{per['note']}. {per['truncation']}"
                mlflow.set_tag(f"eval.{s}.note", per["note"])
            mlflow.set_tag(f"eval.{prefix}{s}.truncation", per["truncation"])
            _say(f"{s}: {per['truncation']}")
        summary["suites"][s] = per
    return summary, records


def bench_models(cfg: DictConfig, tlist: list[Target]) -> dict[str, Path]:
    """{tier label: GGUF} for the MTP bench, from eval.bench_models. A value "quant:<TIER>" is that tier of
    the quant stage's quant_results.json (imatrix preferred; labelled with its quant_results key, e.g.
    "Q4_K_M-imatrix", the name the card's per-quant table matches); it is skipped, with a message, when the
    quant stage has no such file or eval.distill_model names another model's file. Any other value is a GGUF
    path, labelled with its key. Nothing left: the distilled GGUF alone (labelled with its file stem)."""
    out: dict[str, Path] = {}
    for name, ref in (cfg.eval.bench_models or {}).items():
        ref = str(ref)
        if ref.startswith("quant:"):
            tier = ref.removeprefix("quant:")
            hit = None if cfg.eval.distill_model else _quant_file(cfg, tier)
            if hit is None:
                why = "eval.distill_model is set" if cfg.eval.distill_model else "not in the quant stage's results"
                _say(f"MTP bench: eval.bench_models.{name}={ref} skipped ({why})")
                continue
            out[hit[0]] = hit[1]
        else:
            if not Path(ref).is_file():
                raise UserError(f"eval.bench_models.{name}={ref}: no such GGUF file")
            out[str(name)] = Path(ref)
    distill = next((t for t in tlist if t.label == "distill"), None)
    if not out and distill and distill.gguf:
        out = {distill.gguf.stem: distill.gguf}
    return out


def _bench(cfg: DictConfig, out_dir: Path, tlist: list[Target], models: dict[str, Path] | None = None) -> list[dict]:
    import mlflow

    from cardforge.eval import mtp_bench

    ev = cfg.eval
    models = bench_models(cfg, tlist) if models is None else models
    if not (ev.mtp_n_max and cfg.model.has_mtp and models):
        _say("MTP bench skipped (needs model.has_mtp, eval.mtp_n_max and a GGUF, not an endpoint)")
        return []
    n_values = sorted(set(int(n) for n in ev.mtp_n_max) | {0})  # speculation off is the reference
    _say(f"MTP bench: {len(models)} tier(s) {list(models)} x n-max {n_values}")
    rows = mtp_bench.bench(models, n_values, serve_dict(cfg), p_min=float(cfg.serve.mtp.p_min),
                           repeats=int(ev.bench_repeats), max_tokens=int(ev.bench_max_tokens),
                           thinking=bool(ev.thinking), timeout_s=float(ev.timeout_s), log_dir=out_dir / "logs")
    mtp_bench.write(rows, out_dir)
    for r in rows:
        key = f"mtp.{r['tier']}.{r['prompt_type']}.n{r['n_max']}"
        for m in ("tok_s_median", "speedup", "accept_rate", "mean_accept_len"):
            if r[m] is not None:
                mlflow.log_metric(f"{key}.{m}", float(r[m]))
    for f in ("mtp_bench.json", "mtp_bench.md", "mtp_bench.png"):
        mlflow.log_artifact(str(out_dir / f), "eval")
    return rows


def _run_tiers(cfg: DictConfig, out_dir: Path) -> dict[str, dict]:
    """eval.tiers: each tier's distilled GGUF (and the base at the same tier) through every suite; records
    under <out>/tiers/<TIER>/, metrics as tier.<TIER>.<label>.<suite>.*; tables in tiers_table.md."""
    import mlflow

    out: dict[str, dict] = {}
    for tier in cfg.eval.tiers:
        # the proof suite's invented-observation probe runs at the main tier only (it doubles a model's requests)
        tcfg = OmegaConf.merge(cfg, {"eval": {"quant_tier": str(tier), "tiers": [], "proof_probe": False}})
        tlist = targets(tcfg)
        mlflow.set_tags({f"eval.tier.{tier}.{t.label}": str(t.endpoint or t.gguf) for t in tlist})
        out[str(tier)], _ = _run_suites(tcfg, out_dir / "tiers" / str(tier), tlist, str(cfg.paths.root),
                                        prefix=f"tier.{tier}.")
    atomic_write_text(out_dir / "tiers_table.md", "".join(f"## {tier}\n\n{table(s)}\n" for tier, s in out.items()))
    mlflow.log_artifact(str(out_dir / "tiers_table.md"), "eval")
    return out


def run(cfg: DictConfig) -> EvalResult:
    import mlflow

    out_dir = Outputs(cfg).eval.dir
    options(cfg)  # refuses eval.stream=false before anything starts
    for folder, need, what, key in disk_need(cfg, out_dir):  # read-only or full: one line before any build
        preflight_output(folder, need, stage="eval", key=key, what=what)
    tlist = targets(cfg)
    models = bench_models(cfg, tlist) if (cfg.eval.mtp_n_max and cfg.model.has_mtp) else {}
    with tracking.stage_run(cfg, "eval"):
        mlflow.set_tags({f"eval.{t.label}": str(t.endpoint or t.gguf) for t in tlist})
        # what the card's "served the same way" sentence rests on: each model's format, speculation off
        mlflow.set_tags({**{f"eval.{t.label}.format": t.format for t in tlist}, "eval.accuracy_speculation": "off"})
        summary, records = _run_suites(cfg, out_dir, tlist, str(cfg.paths.root))
        if cfg.eval.tiers:  # the same suites at other GGUF tiers, distill vs base at each (eval.tiers)
            summary["tiers"] = _run_tiers(cfg, out_dir)
        rows = _bench(cfg, out_dir, tlist, models)
        summary["mtp_bench"] = rows
        written = EvalOutputs(out_dir)
        atomic_write_json(written.summary, summary)
        atomic_write_text(written.table, table(summary))
        mlflow.log_artifact(str(written.summary), "eval")
        mlflow.log_artifact(str(written.table), "eval")
        for label in records:
            mlflow.log_artifacts(str(out_dir / label), f"eval/records/{label}")
        _say("\n" + table(summary))
    return EvalResult(summary, out_dir, records, rows)
