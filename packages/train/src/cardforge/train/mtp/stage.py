"""MTP stage: retrain the grafted MTP draft head on the distilled model's own continuations.

Run as: python -m cardforge.train.mtp [hydra overrides]      (make mtp EXP=tiny; the pipeline runs it when
        mtp.enabled=true, and the quant stage then quantizes this checkpoint instead of merge's)

Reads  <outputs>/merge/model (the distilled BF16 checkpoint with the base's head grafted on) and the prompts of
       mtp.sources (task specs as in data.sources).
Writes <outputs>/mtp/continuations.jsonl  the distilled model's continuations (greedy, then sampled), resumable
       <outputs>/mtp/model/                the merged checkpoint (files hard-linked) with the retrained `mtp.*`
                                           shard, mtp_manifest.grafted.json / mtp_manifest.retrained.json
       <outputs>/mtp/mtp_result.json       offline accept before/after, losses, the online bench rows
       <outputs>/mtp/mtp_bench.{json,md,png} llama-server draft-mtp: grafted vs retrained vs off, one run

The trunk is frozen; the head learns from (h[t], x[t+1]) -> x[t+2] with the chained drafts of n-max > 1
(fit.py). Offline, the held-out prompts' teacher-forced draft accept rate is measured before and after; online
(mtp.bench) both heads are converted to GGUF at mtp.bench_tier and served side by side by llama-server.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.core import tracking
from cardforge.core.artifacts import RETRAINED_MANIFEST, Outputs
from cardforge.eval.records import append_record
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_dir, atomic_write_json, preflight_output
from cardforge.core.models import mtp as mtp_io


@dataclass
class MtpResult:
    model_dir: str
    offline_before: dict[str, float]
    offline_after: dict[str, float]
    offline_train_after: dict[str, float]
    losses: list[float] = field(default_factory=list)
    bench: list[dict] = field(default_factory=list)
    n_train: int = 0
    n_heldout: int = 0
    tokens_train: int = 0
    wall_s: dict[str, float] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"cardforge mtp: {msg}", file=sys.stderr, flush=True)


def merged_dir(cfg: DictConfig) -> Path:
    d = Outputs(cfg).merge.model
    if not d.is_dir():
        raise UserError(f"no merged model at {d}: run `make merge` first (the MTP stage retrains its head)")
    if not mtp_io.read_mtp_tensors(d):
        raise UserError(f"{d} has no mtp.* tensors: nothing to retrain (model.has_mtp=false models skip this stage)")
    return d


def out_dir(cfg: DictConfig) -> Path:
    return Outputs(cfg).mtp.dir


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_need(cfg: DictConfig, src: Path, out: Path) -> tuple[int, str]:
    """(bytes, what they are) the stage writes under <outputs>/mtp, sized from the merged checkpoint's tensor
    shapes (cardforge.quant.sizes: safetensors headers, GGUF_BPW):
    - gguf/distilled-BF16.gguf, the model llama-server generates the continuations with (kept), unless there;
    - model/: the retrained head shard (BF16); the merged checkpoint's other files are hard links (nothing), or
      copies (its size) when <outputs>/mtp is on another filesystem than the merged model;
    - mtp.bench: each head's GGUF at mtp.bench_tier not there yet, and one BF16 GGUF at a time on the way
      (converted, quantized, deleted);
    - 64 MiB for continuations.jsonl, logs, the bench files and the loss plot.
    GGUFs already there of the same checkpoint count as written (current_gguf): a rerun needs only what is missing."""
    from cardforge.core.artifacts import Tier
    from cardforge.quant import sizes

    inv, vocab = sizes.checkpoint_inventory(src), sizes.tokenizer_bytes(src)
    bf16, parts = sizes.gguf_bytes(inv, "BF16", vocab), []
    need = 64 << 20
    if not current_gguf(out / "gguf" / "distilled-BF16.gguf", checkpoint_id(src, trunk_only=True)):
        need += bf16
        parts.append("the distilled model's BF16 GGUF for the continuations")
    need += sizes.part_bytes(inv, "mtp.")
    if os.stat(src).st_dev != os.stat(_existing(out)).st_dev:
        need += sum(f.stat().st_size for f in src.iterdir() if f.is_file() and f.name != mtp_io.MTP_SHARD)
        parts.append("a copy of the merged checkpoint (another filesystem: no hard links)")
    if cfg.mtp.bench:
        tier = Tier(str(cfg.mtp.bench_tier), imatrix=False).name
        # the retrained head is written anew by every run of the stage, so its GGUF is always rebuilt
        todo = ["retrained"] + [h for h in ("grafted",) if not current_gguf(out / "gguf" / f"{h}-{tier}.gguf",
                                                                             checkpoint_id(src))]
        if todo:
            need += bf16 + len(todo) * sizes.gguf_bytes(inv, tier, vocab)
            parts.append(f"{len(todo)} GGUF(s) at mtp.bench_tier={tier} and a BF16 one in passing (mtp.bench)")
    parts.append("the head shard and records")
    return need, " + ".join(parts)


def prompts(cfg: DictConfig, tokenizer) -> list[tuple[str, list[int]]]:
    """(task id, prompt ids rendered with the model's chat template, thinking on) for mtp.sources."""
    from cardforge.agent.tasks import load_tasks

    tasks = load_tasks(list(cfg.mtp.sources), int(cfg.mtp.num_prompts), int(cfg.mtp.seed))
    out = []
    for t in tasks:
        text = tokenizer.apply_chat_template([{"role": "system", "content": t.system},
                                              {"role": "user", "content": t.prompt}],
                                             tokenize=False, add_generation_prompt=True, enable_thinking=True)
        out.append((t.id, tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split into (train, held-out); at least one of each when there are two or more items."""
    import random

    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_held = min(max(1, round(len(items) * fraction)), len(items) - 1) if len(items) > 1 else 0
    held = set(idx[:n_held])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def continuations(cfg: DictConfig, src: Path, tokenizer, items: list[tuple[str, list[int]]], path: Path,
                  gguf_dir: Path, log_dir: Path) -> dict:
    """{(task id, k): Sequence}: the distilled model's own continuations, greedy for k = 0 and sampled after.

    Generated by llama-server from the merged checkpoint as a BF16 GGUF (the model as served, and 10-100x
    faster than transformers' generate on a CPU), asked with the prompt's token ids and answered with token
    ids (`return_tokens`), so nothing is re-tokenized. Appended to `path` as they come: a rerun asks only
    what is missing (a torn last line from a killed run is asked again)."""
    from tqdm import tqdm

    from cardforge.train.mtp.fit import Sequence

    m = cfg.mtp
    key = {"v": 2, "max_new_tokens": int(m.max_new_tokens), "temperature": float(m.temperature), "top_p": float(m.top_p),
           "seed": int(m.seed), "model": checkpoint_id(src, trunk_only=True)}
    done: dict[tuple[str, int], Any] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("key") == key:
                done[(r["id"], r["k"])] = Sequence(r["ids"], r["prompt_len"], r["id"])
    todo = [(tid, k, ids) for tid, ids in items for k in range(int(m.samples_per_prompt)) if (tid, k) not in done]
    if not todo:
        return done
    from cardforge.quant.gguf import convert
    from cardforge.serve.launchers.llama_cpp import llama_server

    bf16 = gguf_dir / "distilled-BF16.gguf"
    if not current_gguf(bf16, checkpoint_id(src, trunk_only=True)):
        bf16.unlink(missing_ok=True)
        convert(src, bf16)
        mark_gguf(bf16, checkpoint_id(src, trunk_only=True))
    serve = OmegaConf.to_container(cfg.serve, resolve=True, enum_to_str=True)
    serve.update(served_model_name=None, model_path=None, mtp={"enabled": False})
    ctx = max(len(ids) for _, _, ids in todo) + int(m.max_new_tokens) + 8
    serve["ctx_size"] = max(int(serve["ctx_size"]), ctx)
    bar = tqdm(total=len(todo), desc="mtp: continuations", file=sys.stderr)
    with llama_server(bf16, serve, extra_args=["--parallel", "1"], log_path=log_dir / "generate-server.log") as srv:
        for tid, k, ids in todo:
            body = {"prompt": ids, "n_predict": int(m.max_new_tokens), "return_tokens": True, "cache_prompt": False,
                    "temperature": 0.0 if k == 0 else float(m.temperature), "top_p": 1.0 if k == 0 else float(m.top_p),
                    "top_k": 0, "seed": int(m.seed) * 1009 + k}  # the default sampler chain: temperature 0 is greedy
            reply = _post(srv.base_url + "/completion", body, timeout=float(cfg.eval.timeout_s))
            seq = Sequence(list(ids) + list(reply.get("tokens") or []), len(ids), tid)
            append_record(path, {"id": tid, "k": k, "key": key, "prompt_len": seq.prompt_len, "ids": seq.ids})
            done[(tid, k)] = seq
            bar.update(1)
    bar.close()
    return done


def checkpoint_id(src: Path, *, trunk_only: bool = False) -> str:
    """Identifies a checkpoint's weights by name, size and mtime (ns) of its safetensors files, without reading
    them: a rewritten file (a merge rerun, a retrained head written by write_checkpoint) changes it, the hard
    links of unchanged files do not. trunk_only: without the MTP shard (what the continuations depend on)."""
    import hashlib

    parts = sorted(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in src.glob("*.safetensors")
                   if not (trunk_only and f.name == mtp_io.MTP_SHARD))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def current_gguf(path: Path, source_id: str) -> bool:
    """Whether the GGUF at `path` was built from the checkpoint `source_id` names (its sidecar says so). A GGUF
    without one, or of another checkpoint (an earlier head, an earlier merge), is not reused: the bench would
    measure the old head."""
    side = path.with_name(path.name + ".source.json")
    try:
        return path.is_file() and json.loads(side.read_text()).get("checkpoint") == source_id
    except (OSError, ValueError):
        return False


def mark_gguf(path: Path, source_id: str) -> None:
    atomic_write_json(path.with_name(path.name + ".source.json"), {"checkpoint": source_id})


def _post(url: str, body: dict, timeout: float) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def write_checkpoint(src: Path, dst: Path, tensors: dict, grafted_manifest: dict) -> dict:
    """dst = src with the new head: every other file hard-linked (copied across filesystems), never rewritten."""
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.name in (mtp_io.MTP_SHARD, mtp_io.INDEX) or not f.is_file():
                continue
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        if (src / mtp_io.INDEX).is_file():  # write_mtp_tensors rewrites it; start from a private copy
            shutil.copyfile(src / mtp_io.INDEX, tmp / mtp_io.INDEX)
        mtp_io.write_mtp_tensors(tmp, tensors)
        retrained = mtp_io.mtp_manifest(tmp)
        if set(retrained["tensors"]) != set(grafted_manifest["tensors"]):
            raise RuntimeError("the retrained head does not have the grafted head's tensors")
        atomic_write_json(tmp / "mtp_manifest.grafted.json", grafted_manifest)
        atomic_write_json(tmp / RETRAINED_MANIFEST, retrained)
    return retrained


def _device(cfg: DictConfig):
    import torch

    want = str(cfg.mtp.device)
    return torch.device("cuda" if want == "auto" and torch.cuda.is_available() else ("cpu" if want == "auto" else want))


def _bench(cfg: DictConfig, grafted: Path, retrained: Path, out: Path) -> list[dict]:
    from cardforge.eval import mtp_bench
    from cardforge.eval.stage import serve_dict
    from cardforge.quant.gguf import Tier, convert, quantize

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tier = Tier(str(cfg.mtp.bench_tier), imatrix=False)
    threads = int(cfg.serve.threads or os.cpu_count() or 2)
    ggufs = {}
    for label, src in (("grafted", grafted), ("retrained", retrained)):
        final = out / "gguf" / f"{label}-{tier.name}.gguf"
        if not current_gguf(final, checkpoint_id(src)):
            final.unlink(missing_ok=True)
            bf16 = convert(src, out / "gguf" / f"{label}-BF16.gguf")
            quantize(bf16, final, tier, None, threads, logs / f"quantize-{label}.log")
            bf16.unlink()
            mark_gguf(final, checkpoint_id(src))
        ggufs[label] = final
    serve = serve_dict(cfg)
    n_values = sorted(set(int(n) for n in cfg.mtp.bench_n_max) | {0})
    rows = mtp_bench.bench(ggufs, n_values, serve, p_min=float(cfg.serve.mtp.p_min),
                           repeats=int(cfg.mtp.bench_repeats), max_tokens=int(cfg.mtp.bench_max_tokens),
                           thinking=bool(cfg.eval.thinking), timeout_s=float(cfg.eval.timeout_s), log_dir=logs)
    for r in rows:
        r["head"] = r["tier"]
        r["tier"] = f"{r['head']}-{tier.name}"
    return rows


@dataclass
class Trunk:
    """The frozen distilled model and its features on the train / held-out prompts' continuations."""
    model: Any
    feats_train: list
    feats_held: list


def load_trunk(cfg: DictConfig, src: Path, out: Path, device, dtype, times: dict) -> Trunk:
    """The frozen trunk, the prompts split into train / held-out, their continuations and trunk features."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cardforge.train.mtp import fit as F

    m = cfg.mtp
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    items = prompts(cfg, tokenizer)
    if len(items) < 2:
        raise UserError(f"mtp.sources={list(m.sources)} gave {len(items)} prompt(s): need at least 2 "
                        "(one to train on, one held out)")
    _, held_items = split(items, float(m.heldout_fraction), int(m.seed))
    seqs = continuations(cfg, src, tokenizer, items, out / "continuations.jsonl", out / "gguf", out / "logs")
    times["generate_s"] = time.perf_counter() - t0
    held_ids = {tid for tid, _ in held_items}
    t1 = time.perf_counter()
    feats_train = F.trunk_features(model, [s for (tid, _), s in sorted(seqs.items()) if tid not in held_ids])
    feats_held = F.trunk_features(model, [s for (tid, _), s in sorted(seqs.items()) if tid in held_ids])
    times["features_s"] = time.perf_counter() - t1
    return Trunk(model, feats_train, feats_held)


def grafted_head(src: Path, trunk: Trunk, device, dtype):
    """The head merge grafted from the base, as a trainable module."""
    from cardforge.train.mtp.head import MtpHead

    head = MtpHead(trunk.model.config)
    head.load_mtp_tensors(mtp_io.read_mtp_tensors(src))
    return head.to(device=device, dtype=dtype)


def accept(label: str, head, trunk: Trunk, n_max: int, feats: list) -> dict[str, float]:
    """Teacher-forced draft accept stats of `head` on `feats`, logged as mtp.offline.<label>.*."""
    import mlflow

    from cardforge.train.mtp import fit as F

    stats = F.accept_stats(head, trunk.model, feats, n_max)
    mlflow.log_metrics({f"mtp.offline.{label}.{k}": v for k, v in stats.items()})
    return stats


def fit_head(cfg: DictConfig, head, trunk: Trunk, times: dict) -> list[float]:
    """Trains `head` in place on the train prompts' features; the per-step losses."""
    import mlflow
    from tqdm import tqdm

    from cardforge.train.mtp import fit as F

    m = cfg.mtp
    bar = tqdm(total=int(m.steps), desc="mtp: fit", file=sys.stderr)

    def on_step(step: int, loss: float, lr: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step % 10 == 0:
            mlflow.log_metrics({"mtp/loss": loss, "mtp/lr": lr}, step=step)

    t2 = time.perf_counter()
    losses = F.fit(head, trunk.model, trunk.feats_train, steps=int(m.steps), lr=float(m.lr),
                   weight_decay=float(m.weight_decay), unroll=int(m.unroll),
                   step_weights=list(m.step_weights)[: int(m.unroll)], warmup_ratio=float(m.warmup_ratio),
                   seed=int(m.seed), positions_per_step=int(m.positions_per_step) or None, on_step=on_step)
    bar.close()
    times["fit_s"] = time.perf_counter() - t2
    return losses


def save_head(cfg: DictConfig, src: Path, dst: Path, head, grafted_manifest: dict) -> None:
    """<outputs>/mtp/model: the merged checkpoint with the retrained head, both heads' manifests beside it."""
    import mlflow
    import torch

    ckpt_dtype = getattr(torch, str(cfg.merge_dtype)) if "merge_dtype" in cfg else torch.bfloat16
    tensors = {k: v.cpu() for k, v in head.mtp_tensors(ckpt_dtype).items()}
    retrained_manifest = write_checkpoint(src, dst, tensors, grafted_manifest)
    mlflow.set_tags({"mtp.head_sha256": retrained_manifest["shard_sha256"] or "",
                     "mtp.grafted_head_sha256": grafted_manifest["shard_sha256"] or ""})


def bench_online(cfg: DictConfig, src: Path, dst: Path, out: Path, times: dict) -> list[dict]:
    """llama-server draft-mtp, grafted vs retrained vs off (mtp.bench): rows, mtp_bench.* files, metrics."""
    import mlflow

    from cardforge.eval import mtp_bench

    t3 = time.perf_counter()
    rows = _bench(cfg, src, dst, out)
    times["bench_s"] = time.perf_counter() - t3
    mtp_bench.write(rows, out)
    for r in rows:
        for k in ("tok_s_median", "speedup", "accept_rate", "mean_accept_len"):
            if r.get(k) is not None:
                mlflow.log_metric(f"mtp.online.{r['head']}.{r['prompt_type']}.n{r['n_max']}.{k}", float(r[k]))
    return rows


def report(result: MtpResult, out: Path, dst: Path) -> None:
    """mtp_result.json, the loss plot and the bench files, written and logged to MLflow."""
    import mlflow

    from cardforge.train.callbacks import plot_loss

    atomic_write_json(out / "mtp_result.json", asdict(result))
    plot_loss(list(enumerate(result.losses)), out / "mtp_loss.png", "MTP head retraining (one sequence per step)")
    mlflow.log_artifact(str(out / "mtp_result.json"), "mtp")
    mlflow.log_artifact(str(out / "mtp_loss.png"), "mtp")
    for f in ("mtp_bench.json", "mtp_bench.md", "mtp_bench.png"):
        if (out / f).is_file():
            mlflow.log_artifact(str(out / f), "mtp")
    mlflow.log_artifact(str(dst / RETRAINED_MANIFEST), "mtp")


def run(cfg: DictConfig) -> MtpResult:
    import mlflow
    import torch

    if not cfg.model.has_mtp:
        raise UserError("model.has_mtp=false: this model has no MTP head to retrain (set mtp.enabled=false)")
    src, out = merged_dir(cfg), out_dir(cfg)
    need, what = disk_need(cfg, src, out)  # a read-only or full disk: one line before the trunk loads
    preflight_output(out, need, stage="mtp", what=what)
    m, times = cfg.mtp, {}
    torch.manual_seed(int(m.seed))
    device, dtype = _device(cfg), getattr(torch, str(m.dtype))
    n_max, dst = int(m.n_max), Outputs(cfg).mtp.model
    with tracking.stage_run(cfg, "mtp"):
        mlflow.set_tags({"mtp.source": str(src), "mtp.device": str(device)})
        trunk = load_trunk(cfg, src, out, device, dtype, times)
        grafted_manifest = mtp_io.mtp_manifest(src)
        head = grafted_head(src, trunk, device, dtype)
        before = accept("grafted", head, trunk, n_max, trunk.feats_held)
        _say(f"grafted head, held-out: accept {before['accept_rate']:.3f} at n-max {n_max}")
        losses = fit_head(cfg, head, trunk, times)
        after = accept("retrained", head, trunk, n_max, trunk.feats_held)
        train_after = accept("retrained_train", head, trunk, n_max, trunk.feats_train)
        _say(f"retrained head, held-out: accept {after['accept_rate']:.3f} (was {before['accept_rate']:.3f}); "
             f"train prompts {train_after['accept_rate']:.3f}")
        save_head(cfg, src, dst, head, grafted_manifest)
        n_train, n_held = len(trunk.feats_train), len(trunk.feats_held)
        tokens_train = int(sum(len(f.ids) - f.prompt_len for f in trunk.feats_train))
        del trunk  # the model's memory, before llama-server runs the bench
        rows = bench_online(cfg, src, dst, out, times) if m.bench else []
        result = MtpResult(str(dst), before, after, train_after, losses, rows, n_train, n_held, tokens_train, times)
        report(result, out, dst)
    return result
