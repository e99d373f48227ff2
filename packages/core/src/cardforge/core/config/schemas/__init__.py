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

from cardforge.core.config.schemas.card import (  # noqa: F401 - re-exported
    CardReference,
    CardConfig,
    LinkMode,
    ReleaseRepoIds,
    ReleaseRepos,
    ReleaseConfig,
)

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
