"""Typed config schemas for every section of the one Hydra tree (registered in Hydra's ConfigStore), one
module per stage: data (teacher, data), train (lora, trainer), model, mtp, quant, serve, eval, card (card,
release).

The schemas hold types and checks only; every value lives once in YAML: conf/defaults/<section>.yaml (each
knob with its default and a comment), conf/base.yaml (the top-level knobs), the group options
conf/<group>/*.yaml. Every field is MISSING here (tests/unit/test_config_defaults.py holds it so), so a schema
default can never disagree with conf/. Each primary config (conf/<stage>.yaml) starts from
`cardforge_schema`, so a typo'd key or a value of the wrong type fails at composition with the key's name;
enums list the allowed values in that error; `__post_init__` checks cross-field rules and names the override
the user must change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

from cardforge.core.config.schemas.card import (
    CardConfig,
    CardReference,
    LinkMode,
    ReleaseConfig,
    ReleaseRepoIds,
    ReleaseRepos,
)
from cardforge.core.config.schemas.checks import SOURCE_SYNTAX, check_choice, check_sources
from cardforge.core.config.schemas.data import (
    BudgetConfig,
    DataConfig,
    PriceConfig,
    TeacherConfig,
    TeacherKind,
    ToolResults,
)
from cardforge.core.config.schemas.eval import CODING_LANGUAGES, EVAL_SUITES, EvalConfig
from cardforge.core.config.schemas.model import Arch, ModelConfig
from cardforge.core.config.schemas.mtp import MtpTrainConfig
from cardforge.core.config.schemas.quant import GgufTier, GgufTierConfig, NvFp4Tier, QuantConfig, QuantFormat
from cardforge.core.config.schemas.serve import AnthropicServeConfig, Backend, MtpSpecConfig, ServeConfig
from cardforge.core.config.schemas.train import (
    LIGHTNING_PRECISIONS,
    LoraConfig,
    Optimizer,
    Scheduler,
    TrainerConfig,
)

__all__ = [
    "AnthropicServeConfig", "Arch", "Backend", "BudgetConfig", "CODING_LANGUAGES", "CardConfig",
    "CardReference", "CardforgeConfig", "DataConfig", "EVAL_SUITES", "EvalConfig", "GgufTier",
    "GgufTierConfig", "LIGHTNING_PRECISIONS", "LinkMode", "LoggerConfig", "LoraConfig", "ModelConfig",
    "MtpSpecConfig", "MtpTrainConfig", "NvFp4Tier", "Optimizer", "PIPELINE_STAGES", "PathsConfig",
    "PriceConfig", "QuantConfig", "QuantFormat", "ReleaseConfig", "ReleaseRepoIds", "ReleaseRepos",
    "SOURCE_SYNTAX", "Scheduler", "ServeConfig", "Stage", "TeacherConfig", "TeacherKind", "ToolResults",
    "TrainerConfig", "check_choice", "check_sources", "register_configs",
]


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


# cardforge.pipeline.run.STAGES, in chain order; `force=[...]` also takes `all`. Allowed values of keys whose
# owners live in other packages (core imports none of them; tests/unit/test_config_allowed.py keeps each list equal
# to its source of truth): this one, EVAL_SUITES (eval.py), LIGHTNING_PRECISIONS (train.py), GgufTier (quant.py)
PIPELINE_STAGES = ("models", "data", "train", "merge", "mtp", "quant", "eval", "card")


@dataclass
class PathsConfig:
    """paths.*: conf/paths/default.yaml."""


    root: str = MISSING
    outputs: str = MISSING
    cache: str = MISSING


@dataclass
class LoggerConfig:
    """logger.*: conf/logger/mlflow.yaml."""


    _target_: str = MISSING
    experiment_name: str = MISSING
    tracking_uri: Optional[str] = MISSING
    log_model: bool = MISSING


@dataclass
class CardforgeConfig:
    """The whole tree. Every primary config composes every group, so any stage sees the full picture; the
    top-level knobs' values: conf/base.yaml."""

    stage: Stage = MISSING
    experiment: str = MISSING
    run_name: Optional[str] = MISSING
    paths: PathsConfig = MISSING
    logger: LoggerConfig = MISSING
    model: ModelConfig = MISSING
    teacher: TeacherConfig = MISSING
    data: DataConfig = MISSING
    lora: LoraConfig = MISSING
    trainer: TrainerConfig = MISSING
    mtp: MtpTrainConfig = MISSING
    quant: QuantConfig = MISSING
    serve: ServeConfig = MISSING
    eval: EvalConfig = MISSING
    card: CardConfig = MISSING
    release: ReleaseConfig = MISSING
    force: list[str] = MISSING
    format: Optional[QuantFormat] = MISSING
    until: Optional[str] = MISSING
    plan: bool = MISSING
    extra: dict[str, Any] = MISSING

    def __post_init__(self) -> None:
        for name in self.force:
            check_choice("force", name, (*PIPELINE_STAGES, "all"), "stage")
        if self.until is not None:
            check_choice("until", self.until, PIPELINE_STAGES, "stage")


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="cardforge_schema", node=CardforgeConfig)
