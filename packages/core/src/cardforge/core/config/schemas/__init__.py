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
# cardforge.eval.benchmarks.REGISTRY
EVAL_SUITES = ("gpqa_diamond", "mmlu", "humaneval", "coding", "bfcl", "agentic", "proof")
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


# the coding suite's languages (cardforge.eval.coding.runner.TOOLCHAINS; a test keeps the two in step)
CODING_LANGUAGES = ("python", "javascript", "typescript", "java", "cpp", "c", "rust", "go", "ruby", "bash")


@dataclass
class EvalConfig:
    suites: list[str] = field(default_factory=lambda: ["gpqa_diamond", "mmlu"])
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 32768
    stream: bool = True
    concurrency: int = 4
    timeout_s: float = 1800.0
    retries: int = 2
    seed: int = 1234
    limit: Optional[int] = None  # cap questions per suite (tiny runs)
    mmlu_subset: int = 500
    mmlu_shots: int = 5
    compare_base: bool = True  # distill vs base at the same quant
    mtp_n_max: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # speed bench; 0 = speculation off
    thinking: bool = True  # chat_template_kwargs.enable_thinking
    # data: an HF dataset id ("owner/name:config", needs network) or a local file/folder of the same schema
    gpqa_source: str = "Idavidrein/gpqa:gpqa_diamond"
    mmlu_source: str = "cais/mmlu:all"
    # what to evaluate: a GGUF (served here by llama-server) or an endpoint already serving it
    distill_model: Optional[str] = None  # null: <outputs>/quant's eval.quant_tier GGUF
    base_model: Optional[str] = None  # null: model.path converted to a BF16 GGUF (as the serve stage does)
    endpoint: Optional[str] = None  # OpenAI-compatible base URL of the distilled model (overrides distill_model)
    base_endpoint: Optional[str] = None
    quant_tier: str = "Q4_K_M"
    # MTP speed bench: {tier label: GGUF}; empty: the distilled GGUF only
    bench_models: dict[str, str] = field(default_factory=dict)
    bench_repeats: int = 3  # median over repeats
    bench_max_tokens: int = 128
    # lm-eval generate_until tasks run through our streaming client (`cardforge-stream`)
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include_path: Optional[str] = None
    progress: bool = True
    # bfcl suite: BFCL v4 sets of the bfcl-eval package (or question files in its layout), AST-matched
    bfcl_sets: list[str] = field(default_factory=lambda: ["simple_python", "multiple", "parallel",
                                                          "parallel_multiple", "irrelevance"])
    bfcl_limit: Optional[int] = None  # a seeded sample of N items per set; null: every item
    # agentic suite: our multi-step tasks with real tools in the sandbox, checked on the final workspace
    agentic_limit: Optional[int] = None  # the first N tasks; null: all
    agentic_max_steps: Optional[int] = None  # model turns per task, overriding each task's own budget
    agentic_tool_timeout_s: float = 10.0  # per sandboxed tool call
    proof_tasks: int = 100  # the proof suite: held-out tasks (new values + the second surface form)
    proof_probe: bool = True  # the proof suite: also ask each task's first step without stop strings
    # extra GGUF tiers evaluated side by side (quant_results keys' prefixes, e.g. [BF16, Q4_K_M]); empty: only
    # eval.quant_tier. Each tier's records go under <outputs>/eval/tiers/<TIER>/, metrics as tier.<TIER>.*
    tiers: list[str] = field(default_factory=list)
    judge_url: Optional[str] = None  # an OpenAI-compatible LLM judge beside the agentic checkers (judge_accuracy)
    judge_model: Optional[str] = None
    # coding suites (humaneval, coding): answers compiled and run in the sandbox against hidden tests
    coding_languages: list[str] = field(default_factory=lambda: list(CODING_LANGUAGES))
    coding_problems: Optional[int] = None  # the first N of the 10 coding problems per language; null: all
    # seconds per run of an answer's tests, by language (humaneval uses python's); the compile step has its own
    coding_timeout_s: dict[str, float] = field(default_factory=lambda: {lang: 10.0 for lang in CODING_LANGUAGES})
    coding_compile_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"eval.concurrency must be >= 1, got {self.concurrency}")
        for suite in self.suites:
            check_choice("eval.suites", suite, EVAL_SUITES, "suite")
        check_choice("eval.quant_tier", self.quant_tier, GgufTier, "GGUF tier")
        for key, names in (("coding_languages", self.coding_languages), ("coding_timeout_s", self.coding_timeout_s)):
            if bad := sorted(set(names) - set(CODING_LANGUAGES)):
                raise ValueError(f"eval.{key}: unknown language(s) {bad}; known: {list(CODING_LANGUAGES)}")
        if "coding" in self.suites and not self.coding_languages:
            raise ValueError("eval.coding_languages is empty but eval.suites has coding: name at least one language")
        if self.coding_problems is not None and self.coding_problems < 1:
            raise ValueError(f"eval.coding_problems must be >= 1 or null, got {self.coding_problems}")
        for key in ("bfcl_limit", "agentic_limit", "agentic_max_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"eval.{key} must be >= 1 or null, got {getattr(self, key)}")
        if not self.bfcl_sets and "bfcl" in self.suites:
            raise ValueError("eval.bfcl_sets is empty but eval.suites has bfcl: name at least one BFCL set")
        if self.retries < 0:
            raise ValueError(f"eval.retries must be >= 0, got {self.retries}")
        if any(n < 0 for n in self.mtp_n_max):
            raise ValueError(f"eval.mtp_n_max entries must be >= 0 (0 = speculation off), got {self.mtp_n_max}")
        if self.bench_repeats < 1:
            raise ValueError(f"eval.bench_repeats must be >= 1, got {self.bench_repeats}")


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
