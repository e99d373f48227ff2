"""Stage outputs: one typed handle per artifact a stage writes and a later stage reads.

    out = Outputs(cfg)                       # <paths.outputs>
    out.merge.model                          # merge/model/        (merge writes; mtp, quant, serve, release read)
    out.quant.results().gguf("Q4_K_M")       # ("Q4_K_M-imatrix", Path)  (quant writes; eval, card, release read)
    Tier("Q4_K_M", imatrix=True).key         # "Q4_K_M-imatrix": the one spelling of a GGUF tier key

The writer and its readers name a file through the same attribute, so a renamed file is renamed for all of
them. A stage's private files (resume state, logs) stay its own business under its handle's `dir`.
tests/unit/test_artifacts_guard.py fails when a module outside this one builds `<paths.outputs>/...`, a
quant_results key or another stage's artifact name by hand.

MLflow keeps the same files as run artifacts; the artifact paths the card and release read back live here
too (`QuantOutputs.RESULTS_ARTIFACT`, ...), beside the local ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# --- GGUF tiers: the one runtime type and the one key spelling ---

IMATRIX_SUFFIX = "-imatrix"
BASE_PREFIX = "base:"  # quant_results keys of the base model's tiers (quant.base_tiers)


@dataclass(frozen=True)
class Tier:
    """A GGUF tier: llama.cpp's file type (Q4_K_M, Q8_0, BF16, ...) and whether llama-quantize used an
    importance matrix. The config spells it `GgufTierConfig(tier: GgufTier, imatrix)` (schemas; GgufTier lists
    the allowed names); everything past the config uses this type (`Tier.of(entry)`)."""

    name: str
    imatrix: bool = False

    @property
    def key(self) -> str:
        """The tier's name in quant_results.json, MLflow metrics, the card's tables and GGUF file names."""
        return f"{self.name}{IMATRIX_SUFFIX if self.imatrix else ''}"

    def result_key(self, base: bool = False) -> str:
        """Its quant_results.json key: `key`, prefixed `base:` for the base model's file."""
        return f"{BASE_PREFIX if base else ''}{self.key}"

    @classmethod
    def of(cls, entry: Any) -> "Tier":
        """From a config entry (GgufTierConfig / its dict form {tier, imatrix}), a Tier, or a key string."""
        if isinstance(entry, Tier):
            return entry
        if isinstance(entry, str):
            return cls.parse(entry)
        tier = entry["tier"] if isinstance(entry, dict) else entry.tier
        imatrix = entry.get("imatrix", True) if isinstance(entry, dict) else entry.imatrix
        return cls(str(getattr(tier, "value", tier)), bool(imatrix))

    @classmethod
    def parse(cls, key: str) -> "Tier":
        """"Q4_K_M-imatrix" -> Tier("Q4_K_M", True); a `base:` prefix is dropped (see is_base)."""
        key = str(key).removeprefix(BASE_PREFIX)
        return cls(key.removesuffix(IMATRIX_SUFFIX), key.endswith(IMATRIX_SUFFIX))


# Bits per weight of each GGUF tier's file (llama.cpp's mix: some tensors kept at a wider type), for size and
# free-space estimates: the plan (cardforge.pipeline.plan, which must work without the quant package) and the
# quant/mtp/eval preflights (cardforge.quant.sizes). The k-quant mixes and Q8_0 are llama.cpp's published bits/weight
# (tools/quantize/README.md, Llama-3.1-8B: Q4_K_M 4.8944, Q5_K_M 5.7036, Q6_K 6.5633, Q8_0 8.5008); Q4_0 / Q5_0 are
# their block layouts (32 weights + an fp16 scale: 4.5 / 5.5). On Qwen3.6-27B they put the text GGUFs within 0.6%
# of the published files (tests/unit/test_plan_layout.py). Unknown tiers: 8.
GGUF_BPW = {"BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.70, "Q5_0": 5.5, "Q4_K_M": 4.89, "Q4_0": 4.5}


def is_base(key: str) -> bool:
    """Whether a quant_results key names the base model's file (quant.base_tiers)."""
    return str(key).startswith(BASE_PREFIX)


def tier_keys(entries: Iterable[Any]) -> list[str]:
    """The keys of config tier entries (quant.gguf_tiers), in order."""
    return [Tier.of(e).key for e in entries]


def flat_tier_keys(params: dict[str, str], prefix: str = "quant.gguf_tiers") -> list[str]:
    """The keys of a tier list from its flattened MLflow params (`quant.gguf_tiers.0.tier` = Q4_K_M,
    `quant.gguf_tiers.0.imatrix` = True, ...), as a quant run logged its config."""
    out, i = [], 0
    while (name := params.get(f"{prefix}.{i}.tier")) is not None:
        out.append(Tier(name, params.get(f"{prefix}.{i}.imatrix") == "True").key)
        i += 1
    return out


# --- per-stage handles ---

# the stored MTP head manifests (name, shape, dtype, sha256 per mtp.* tensor) beside / inside a checkpoint;
# quant's lineage check looks for them next to any source checkpoint, so they are names, not only paths
BASE_MANIFEST = "mtp_manifest.base.json"  # <outputs>/merge/: the base model's head
MERGED_MANIFEST = "mtp_manifest.merged.json"  # <outputs>/merge/, beside model/: the merged checkpoint's head
RETRAINED_MANIFEST = "mtp_manifest.retrained.json"  # inside <outputs>/mtp/model/: the retrained head


@dataclass(frozen=True)
class DataOutputs:
    dir: Path

    @property
    def trajectories(self) -> Path:  # the accepted set: train's input, quant's calibration text
        return self.dir / "trajectories.jsonl"

    @property
    def rejections(self) -> Path:  # the rejected set: more calibration text for quant
        return self.dir / "rejections.jsonl"

    @property
    def spend(self) -> Path:  # the teacher token ledger (the pipeline plan's cost estimate reads it)
        return self.dir / "spend.jsonl"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    MANIFEST_ARTIFACT = "data/manifest.json"


@dataclass(frozen=True)
class TrainOutputs:
    dir: Path  # <outputs>/train; a multirun job writes under runs/<config hash>/ (train_dir)

    def run_dir(self, config_hash: str | None = None) -> Path:
        """Where one training run writes: the stage folder, or runs/<hash>/ for a sweep job."""
        return self.dir / "runs" / config_hash if config_hash else self.dir

    @property
    def adapter(self) -> Path:  # the PEFT adapter directory merge reads
        return self.dir / "adapter"

    @property
    def result(self) -> Path:
        return self.dir / "train_result.json"


@dataclass(frozen=True)
class MergeOutputs:
    dir: Path

    @property
    def model(self) -> Path:  # the merged BF16 checkpoint (mtp, quant, serve and release read it)
        return self.dir / "model"

    @property
    def base_manifest(self) -> Path:  # the base model's MTP head, sha256 per tensor
        return self.dir / BASE_MANIFEST

    @property
    def merged_manifest(self) -> Path:  # the merged checkpoint's MTP head
        return self.dir / MERGED_MANIFEST

    @property
    def result(self) -> Path:
        return self.dir / "merge_result.json"

    @property
    def layout(self) -> Path:
        return self.dir / "merge_layout.json"

    # as the merge run logs them (artifact paths in the run)
    RESULT_ARTIFACT = "merge_result.json"
    BASE_MANIFEST_ARTIFACT = BASE_MANIFEST


@dataclass(frozen=True)
class MtpOutputs:
    dir: Path

    @property
    def model(self) -> Path:  # the merged checkpoint with the retrained MTP head (quant reads it)
        return self.dir / "model"

    @property
    def retrained_manifest(self) -> Path:
        return self.model / RETRAINED_MANIFEST


@dataclass
class QuantResults:
    """quant_results.json: `files` maps a key (Tier.result_key(), FP8-block128, NVFP4-W4A16, ...) to
    {path, GB, GiB, kld_mean, ...}; the rest (source, llama_cpp, mtp_manifest, ...) stays in `raw`."""

    files: dict[str, dict] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None) -> "QuantResults":
        d = d or {}
        return cls(dict(d.get("files") or {}), d)

    @classmethod
    def load(cls, path: Path) -> "QuantResults":
        """The file's results; empty when it does not exist (no quant run yet)."""
        return cls.from_dict(json.loads(Path(path).read_text()) if Path(path).is_file() else {})

    def ggufs(self) -> dict[str, dict]:
        return {k: v for k, v in self.files.items() if str(v.get("path", "")).endswith(".gguf")}

    def gguf(self, tier: str | Tier, imatrix: bool | None = None, base: bool = False) -> tuple[str, Path] | None:
        """(key, path) of the GGUF at `tier`: with `imatrix=None` the imatrix file when there is one (the eval
        stage's, the card's and the MTP bench's choice), else the other; `base`: the base model's file.
        A tier given as a key ("Q4_K_M-imatrix", "base:Q8_0") says imatrix and base itself."""
        if isinstance(tier, str):
            base = base or is_base(tier)
            t = Tier.parse(tier)
            name, imatrix = t.name, (True if t.imatrix else imatrix)
        else:
            name, imatrix = tier.name, tier.imatrix if imatrix is None else imatrix
        choices = [True, False] if imatrix is None else [bool(imatrix)]
        ggufs = self.ggufs()
        for imat in choices:
            key = Tier(name, imat).result_key(base)
            if key in ggufs:
                return key, Path(str(ggufs[key]["path"]))
        return None


@dataclass(frozen=True)
class QuantOutputs:
    dir: Path

    @property
    def results_file(self) -> Path:
        return self.dir / "quant_results.json"

    def results(self) -> QuantResults:
        return QuantResults.load(self.results_file)

    @property
    def table(self) -> Path:
        return self.dir / "quant_table.md"

    @property
    def imatrix(self) -> Path:  # the importance matrix (eval quantizes the base with it)
        return self.dir / "imatrix.gguf"

    @property
    def gguf_dir(self) -> Path:
        return self.dir / "gguf"

    RESULTS_ARTIFACT = "quant/quant_results.json"


@dataclass(frozen=True)
class EvalOutputs:
    dir: Path

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def table(self) -> Path:
        return self.dir / "eval_table.md"

    @property
    def base_gguf_dir(self) -> Path:  # the base model's GGUFs eval builds when quant has none
        return self.dir / "base-gguf"

    SUMMARY_ARTIFACT = "eval/summary.json"
    BENCH_PLOT_ARTIFACT = "eval/mtp_bench.png"


@dataclass(frozen=True)
class CardOutputs:
    dir: Path

    @property
    def readme(self) -> Path:
        return self.dir / "README.md"

    @property
    def sources(self) -> Path:  # card.json: which run each number came from
        return self.dir / "card.json"

    ARTIFACT = "card"  # the card run's artifact folder (README.md, card.json, plots)


@dataclass(frozen=True)
class ServeOutputs:
    dir: Path

    def log(self, backend: str) -> Path:
        return self.dir / f"{backend}.log"


class Outputs:
    """Every stage's outputs under `paths.outputs` (a config, or the folder itself)."""

    def __init__(self, cfg_or_root: Any):
        if isinstance(cfg_or_root, (str, Path)):
            self.root, self._release = Path(cfg_or_root), None
        else:
            from omegaconf import OmegaConf

            self.root = Path(str(cfg_or_root.paths.outputs))
            self._release = OmegaConf.select(cfg_or_root, "release.out_dir", default=None)

    def __repr__(self) -> str:
        return f"Outputs({str(self.root)!r})"

    @property
    def data(self) -> DataOutputs:
        return DataOutputs(self.root / "data")

    @property
    def train(self) -> TrainOutputs:
        return TrainOutputs(self.root / "train")

    @property
    def merge(self) -> MergeOutputs:
        return MergeOutputs(self.root / "merge")

    @property
    def mtp(self) -> MtpOutputs:
        return MtpOutputs(self.root / "mtp")

    @property
    def quant(self) -> QuantOutputs:
        return QuantOutputs(self.root / "quant")

    @property
    def eval(self) -> EvalOutputs:
        return EvalOutputs(self.root / "eval")

    @property
    def card(self) -> CardOutputs:
        return CardOutputs(self.root / "card")

    @property
    def serve(self) -> ServeOutputs:
        return ServeOutputs(self.root / "serve")

    @property
    def release(self) -> Path:
        """release.out_dir, else <outputs>/release (its repositories: main/, fp8/, nvfp4-*/)."""
        return Path(str(self._release)) if self._release else self.root / "release"

    def pipeline_record(self, stage: str) -> Path:
        """The pipeline's record of a finished stage (its config key and outputs, for skipping reruns)."""
        return self.root / ".pipeline" / f"{stage}.json"
