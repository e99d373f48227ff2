"""eval.*: the eval stage's schema (values: conf/defaults/eval.yaml, conf/eval/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from cardforge.core.config.schemas.checks import check_choice
from cardforge.core.config.schemas.quant import GgufTier


# cardforge.eval.benchmarks.REGISTRY
EVAL_SUITES = ("gpqa_diamond", "mmlu", "humaneval", "coding", "bfcl", "agentic", "proof")


# the coding suite's languages (cardforge.eval.coding.runner.TOOLCHAINS; a test keeps the two in step)
CODING_LANGUAGES = ("python", "javascript", "typescript", "java", "cpp", "c", "rust", "go", "ruby", "bash")


@dataclass
class EvalConfig:
    suites: list[str] = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    max_tokens: int = MISSING
    stream: bool = MISSING
    concurrency: int = MISSING
    timeout_s: float = MISSING
    idle_timeout_s: float = MISSING
    retries: int = MISSING
    seed: int = MISSING
    limit: Optional[int] = MISSING
    mmlu_subset: int = MISSING
    mmlu_shots: int = MISSING
    compare_base: bool = MISSING
    mtp_n_max: list[int] = MISSING
    thinking: bool = MISSING
    gpqa_source: str = MISSING
    mmlu_source: str = MISSING
    distill_model: Optional[str] = MISSING
    base_model: Optional[str] = MISSING
    endpoint: Optional[str] = MISSING
    base_endpoint: Optional[str] = MISSING
    quant_tier: str = MISSING
    bench_models: dict[str, str] = MISSING
    bench_repeats: int = MISSING
    bench_max_tokens: int = MISSING
    lm_eval_tasks: list[str] = MISSING
    lm_eval_include_path: Optional[str] = MISSING
    progress: bool = MISSING
    bfcl_sets: list[str] = MISSING
    bfcl_limit: Optional[int] = MISSING
    agentic_limit: Optional[int] = MISSING
    agentic_max_steps: Optional[int] = MISSING
    agentic_tool_timeout_s: float = MISSING
    proof_tasks: int = MISSING
    proof_probe: bool = MISSING
    tiers: list[str] = MISSING
    judge_url: Optional[str] = MISSING
    judge_model: Optional[str] = MISSING
    coding_languages: list[str] = MISSING
    coding_problems: Optional[int] = MISSING
    coding_timeout_s: dict[str, float] = MISSING
    coding_compile_timeout_s: float = MISSING

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
