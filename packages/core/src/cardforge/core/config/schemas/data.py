"""teacher.* and data.*: the data stage's schemas.

Values: conf/defaults/{teacher,data}.yaml, conf/teacher/*.yaml, conf/data/*.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from cardforge.core.config.schemas.checks import check_choice, check_sources


class ToolResults(str, Enum):
    simulate = "simulate"  # card v1: a small model role-plays the runtime
    execute = "execute"  # card's next version: real sandbox + judge rejection sampling


class TeacherKind(str, Enum):
    embedded = "embedded"  # llama-server started by us on an embedded model
    endpoint = "endpoint"  # any OpenAI-compatible URL
    scripted = "scripted"  # the scripted expert (cardforge.agent.scripted_teacher), a test double started by us


@dataclass
class PriceConfig:
    """teacher.price: what the teacher's API charges per million tokens (null: unknown, no money is counted)."""
    input_per_m: Optional[float] = MISSING
    output_per_m: Optional[float] = MISSING
    currency: str = MISSING

    def __post_init__(self) -> None:
        for k in ("input_per_m", "output_per_m"):
            if getattr(self, k) is not None and getattr(self, k) < 0:
                raise ValueError(f"teacher.price.{k} must be >= 0 (or null), got {getattr(self, k)}")


@dataclass
class BudgetConfig:
    """data.budget: the data stage stops starting samples once the teacher spent this much (null: no limit);
    a re-run with a larger budget resumes where it stopped."""
    tokens: Optional[int] = MISSING
    cost: Optional[float] = MISSING

    def __post_init__(self) -> None:
        if self.tokens is not None and self.tokens < 0:
            raise ValueError(f"data.budget.tokens must be >= 0 (or null), got {self.tokens}")
        if self.cost is not None and self.cost < 0:
            raise ValueError(f"data.budget.cost must be >= 0 (or null), got {self.cost}")


@dataclass
class TeacherConfig:
    kind: TeacherKind = MISSING
    model: str = MISSING
    base_url: Optional[str] = MISSING
    api_key_env: str = MISSING
    thinking: bool = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    max_tokens: int = MISSING
    concurrency: int = MISSING
    timeout_s: float = MISSING
    ctx_size: int = MISSING
    threads: int = MISSING
    idle_timeout_s: float = MISSING
    price: PriceConfig = MISSING

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"teacher.concurrency must be >= 1, got {self.concurrency}")
        if self.kind == TeacherKind.endpoint and not self.base_url:
            raise ValueError("teacher.base_url is required when teacher.kind=endpoint")


@dataclass
class DataConfig:
    name: str = MISSING
    num_samples: int = MISSING
    tool_results: ToolResults = MISSING
    max_steps: int = MISSING
    judge: bool = MISSING
    seed: int = MISSING
    max_seq_len: int = MISSING
    sources: list[str] = MISSING
    samples_per_task: int = MISSING
    retries: int = MISSING
    retry_errors: bool = MISSING
    max_retries: int = MISSING
    tool_timeout_s: float = MISSING
    simulator_url: Optional[str] = MISSING
    simulator_model: Optional[str] = MISSING
    judge_url: Optional[str] = MISSING
    judge_model: Optional[str] = MISSING
    min_accepted: int = MISSING
    budget: BudgetConfig = MISSING
    train_format: str = MISSING
    mask_tool_results: bool = MISSING

    def __post_init__(self) -> None:
        if self.judge and self.tool_results != ToolResults.execute:
            raise ValueError("data.judge=true needs data.tool_results=execute (a judge needs real results)")
        if self.samples_per_task < 1:
            raise ValueError(f"data.samples_per_task must be >= 1, got {self.samples_per_task}")
        if self.max_steps < 1:
            raise ValueError(f"data.max_steps must be >= 1, got {self.max_steps}")
        if self.max_seq_len < 1:
            raise ValueError(f"data.max_seq_len must be >= 1 (tokens per training sample), got {self.max_seq_len}")
        if self.num_samples < 0:
            raise ValueError(f"data.num_samples must be >= 0 (0: every task), got {self.num_samples}")
        if self.max_retries < 0:
            raise ValueError(f"data.max_retries must be >= 0, got {self.max_retries}")
        if not self.sources:
            raise ValueError("data.sources is empty: name at least one task source (e.g. data.sources=[builtin])")
        check_sources("data.sources", self.sources)
        check_choice("data.train_format", self.train_format, ("template", "react_wire"))
