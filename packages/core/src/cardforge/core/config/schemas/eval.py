"""eval.*: the eval stage's schema (values: conf/defaults/eval.yaml, conf/eval/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cardforge.core.config.schemas.checks import check_choice
from cardforge.core.config.schemas.quant import GgufTier


# cardforge.eval.benchmarks.REGISTRY
EVAL_SUITES = ("gpqa_diamond", "mmlu", "humaneval", "coding", "bfcl", "agentic", "proof")


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
