"""Typed config schemas for every section of the one Hydra tree (registered in Hydra's ConfigStore).

Each primary config (conf/<stage>.yaml) starts from `cardforge_schema`, so a typo'd key or a value of
the wrong type fails at composition with the key's name. Enums list the allowed values in that error.
`__post_init__` checks cross-field rules and names the override the user must change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

from cardforge.core.config.schemas.eval import (  # noqa: F401 - re-exported
    EVAL_SUITES,
    CODING_LANGUAGES,
    EvalConfig,
)

from cardforge.core.config.schemas.serve import (  # noqa: F401 - re-exported
    Backend,
    MtpSpecConfig,
    AnthropicServeConfig,
    ServeConfig,
)

from cardforge.core.config.schemas.mtp import (  # noqa: F401 - re-exported
    MtpTrainConfig,
)

from cardforge.core.config.schemas.model import (  # noqa: F401 - re-exported
    Arch,
    ModelConfig,
)

from cardforge.core.config.schemas.train import (  # noqa: F401 - re-exported
    Optimizer,
    Scheduler,
    LIGHTNING_PRECISIONS,
    LoraConfig,
    TrainerConfig,
)

from cardforge.core.config.schemas.data import (  # noqa: F401 - re-exported
    ToolResults,
    TeacherKind,
    PriceConfig,
    BudgetConfig,
    TeacherConfig,
    DataConfig,
)

from cardforge.core.config.schemas.quant import (  # noqa: F401 - re-exported
    GgufTier,
    NvFp4Tier,
    QuantFormat,
    GgufTierConfig,
    QuantConfig,
)

from cardforge.core.config.schemas.checks import (  # noqa: F401 - re-exported
    SOURCE_SYNTAX,
    check_choice,
    check_sources,
)


class Stage(str, Enum):
    """The primary config (`stage: NAME`); renders as its value (hydra.run.dir `.../${stage}/...`)."""

    data = "data"
    train = "train"
    merge = "merge"
    mtp = "mtp"
    quant = "quant"
    serve = "serve"
    eval = "eval"
    card = "card"
    pipeline = "pipeline"
    release = "release"

    def __str__(self) -> str:  # `${stage}` in a string interpolation: "pipeline", not "Stage.pipeline"
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# --- allowed values of str / list[str] keys whose owners live in other packages (core imports none of them);
# tests/unit/test_config_allowed.py keeps each list equal to its source of truth ---

# cardforge.pipeline.run.STAGES, in chain order; `force=[...]` also takes `all`
PIPELINE_STAGES = ("models", "data", "train", "merge", "mtp", "quant", "eval", "card")
@dataclass
class PathsConfig:
    root: str = MISSING  # the repo checkout
    outputs: str = MISSING  # stage outputs (artifacts live under here, keyed by experiment)
    cache: str = MISSING  # shared cache outside the repo (llama.cpp build, embedded models)


@dataclass
class LoggerConfig:
    _target_: str = "lightning.pytorch.loggers.MLFlowLogger"
    experiment_name: str = "cardforge"
    tracking_uri: Optional[str] = None  # None -> MLFLOW_TRACKING_URI or the repo's sqlite store
    log_model: bool = False


@dataclass
class CardReference:
    """One published technique the recipe combines (the card's attribution list, conf/card/*.yaml)."""

    name: str = MISSING
    authors: str = MISSING
    year: int = MISSING
    ref: str = ""  # arXiv id or venue
    used_for: str = ""  # what the recipe takes from it, English
    used_for_zh: str = ""  # the same, Chinese


@dataclass
class CardConfig:
    title: str = MISSING
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    license: str = "apache-2.0"
    hf_repo: Optional[str] = None
    modelscope_repo: Optional[str] = None
    # the pipeline run to compile; null: the pipeline run this process is part of, else the latest
    # FINISHED pipeline run of `experiment` (a killed or failed one is never picked by default)
    parent_run_id: Optional[str] = None
    attribution: list[CardReference] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [lang for lang in self.languages if lang not in ("en", "zh")]
        if unknown or not self.languages:
            raise ValueError(f"card.languages must be a non-empty subset of [en, zh], got {list(self.languages)}")


class LinkMode(str, Enum):
    hardlink = "hardlink"  # a file on another filesystem is copied instead (said in the output and manifest)
    copy = "copy"


@dataclass
class ReleaseRepoIds:
    """Where one repository goes: OWNER/NAME per hub; null: <hub>_namespace/<repo name>, else not uploaded."""

    hf: Optional[str] = None
    modelscope: Optional[str] = None


@dataclass
class ReleaseRepos:
    main: ReleaseRepoIds = field(default_factory=ReleaseRepoIds)  # card + BF16 safetensors + gguf/
    fp8: ReleaseRepoIds = field(default_factory=ReleaseRepoIds)  # FP8 block-128
    nvfp4: ReleaseRepoIds = field(default_factory=ReleaseRepoIds)  # NVFP4 W4A16 at the root + w4a4/


@dataclass
class ReleaseConfig:
    """The release bundle (python -m cardforge.card release; conf/release.yaml)."""

    out_dir: Optional[str] = None  # null: <paths.outputs>/release (not interpolated: the config hash ignores paths)
    dry_run: bool = False  # list what would be uploaded, write nothing
    link: LinkMode = LinkMode.hardlink
    parent_run_id: Optional[str] = None  # the pipeline run to release; null: as the card stage picks it
    name: Optional[str] = None  # main repo name (FP8/NVFP4 add -FP8/-NVFP4); null: card.title
    gguf_name: Optional[str] = None  # GGUF file prefix (<gguf_name>-MTP-<TIER>.gguf); null: the quant stage's names
    gguf_tiers: list[str] = field(default_factory=list)  # quant_results keys to ship; empty: the quant run's tiers
    hf_namespace: Optional[str] = None
    modelscope_namespace: Optional[str] = None
    repos: ReleaseRepos = field(default_factory=ReleaseRepos)
    hf_cli: str = "hf"  # hf | huggingface-cli (same arguments)
    license: Optional[str] = None  # null: card.license
    attribution: list[CardReference] = field(default_factory=list)  # empty: card.attribution

    def __post_init__(self) -> None:
        if self.hf_cli not in ("hf", "huggingface-cli"):
            raise ValueError(f"release.hf_cli must be hf or huggingface-cli, got {self.hf_cli!r}")
        for key in ("hf_namespace", "modelscope_namespace"):
            if "/" in (getattr(self, key) or ""):
                raise ValueError(f"release.{key} is an owner (user or org), without '/': {getattr(self, key)!r}")
        for repo in ("main", "fp8", "nvfp4"):
            for hub in ("hf", "modelscope"):
                rid = getattr(getattr(self.repos, repo), hub)
                if rid and rid.count("/") != 1:
                    raise ValueError(f"release.repos.{repo}.{hub} must be OWNER/NAME, got {rid!r}")


@dataclass
class CardforgeConfig:
    """The whole tree. Every primary config composes every group, so any stage sees the full picture."""

    stage: Stage = MISSING
    experiment: str = MISSING  # the experiment preset's name; tags every MLflow run
    run_name: Optional[str] = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mtp: MtpTrainConfig = field(default_factory=MtpTrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    card: CardConfig = field(default_factory=CardConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    force: list[str] = field(default_factory=list)  # stages to rerun although their inputs are unchanged
    format: Optional[QuantFormat] = None  # quant stage only: build just this format (`format=gguf`)
    until: Optional[str] = None  # pipeline only: stop after this stage (`until=train`)
    plan: bool = False  # pipeline only: print the plan (stages, commands, GPU/disk needs, what is missing)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for stage-specific experiments

    def __post_init__(self) -> None:
        for name in self.force:
            check_choice("force", name, (*PIPELINE_STAGES, "all"), "stage")
        if self.until is not None:
            check_choice("until", self.until, PIPELINE_STAGES, "stage")


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="cardforge_schema", node=CardforgeConfig)
