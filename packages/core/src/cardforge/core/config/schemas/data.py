"""teacher.* and data.*: the data stage's schemas (values: conf/defaults/{teacher,data}.yaml, conf/{teacher,data}/)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    scripted = "scripted"  # the scripted expert (cardforge.data.scripted_teacher), a test double started by us


@dataclass
class PriceConfig:
    """teacher.price: what the teacher's API charges per million tokens (null: unknown, no money is counted)."""
    input_per_m: Optional[float] = None  # prompt tokens
    output_per_m: Optional[float] = None  # completion tokens (reasoning included: billed as output)
    currency: str = "USD"

    def __post_init__(self) -> None:
        for k in ("input_per_m", "output_per_m"):
            if getattr(self, k) is not None and getattr(self, k) < 0:
                raise ValueError(f"teacher.price.{k} must be >= 0 (or null), got {getattr(self, k)}")


@dataclass
class BudgetConfig:
    """data.budget: the data stage stops starting samples once the teacher spent this much (null: no limit);
    a re-run with a larger budget resumes where it stopped."""
    tokens: Optional[int] = None  # prompt + completion tokens of every teacher request, all runs together
    cost: Optional[float] = None  # in teacher.price.currency (needs teacher.price)

    def __post_init__(self) -> None:
        if self.tokens is not None and self.tokens < 0:
            raise ValueError(f"data.budget.tokens must be >= 0 (or null), got {self.tokens}")
        if self.cost is not None and self.cost < 0:
            raise ValueError(f"data.budget.cost must be >= 0 (or null), got {self.cost}")


@dataclass
class TeacherConfig:
    kind: TeacherKind = TeacherKind.embedded
    model: str = MISSING  # served model name, or the embedded model's name
    base_url: Optional[str] = None  # required for kind=endpoint
    api_key_env: str = "OPENAI_API_KEY"
    thinking: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 4096
    concurrency: int = 4
    timeout_s: float = 600.0
    ctx_size: int = 4096  # kind=embedded: llama-server context per slot
    threads: int = 0  # kind=embedded: llama-server -t (0: llama.cpp decides)
    idle_timeout_s: float = 300.0  # no byte for this long: the request is retried (timeout_s caps the whole)
    price: PriceConfig = field(default_factory=PriceConfig)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"teacher.concurrency must be >= 1, got {self.concurrency}")
        if self.kind == TeacherKind.endpoint and not self.base_url:
            raise ValueError("teacher.base_url is required when teacher.kind=endpoint")


@dataclass
class DataConfig:
    name: str = MISSING
    num_samples: int = 16
    tool_results: ToolResults = ToolResults.simulate
    max_steps: int = 6  # ReAct loop bound per trajectory
    judge: bool = False  # rejection sampling by a judge (needs tool_results=execute)
    seed: int = 0
    max_seq_len: int = 1024
    eval_fraction: float = 0.05
    # task sources (cardforge.data.tasks): builtin | humaneval | bfcl:FILE | jsonl:FILE
    sources: list[str] = field(default_factory=lambda: ["builtin"])
    samples_per_task: int = 1  # k teacher samples per task (rejection sampling keeps the judged-good ones)
    retries: int = 3  # per teacher request, with exponential backoff; then the sample is recorded as an error
    retry_errors: bool = True  # a re-run asks again for samples rejected as teacher_error / simulator_error ...
    max_retries: int = 3  # ... on at most this many later runs each; then the rejection stays
    tool_timeout_s: float = 10.0  # wall clock per sandboxed tool call
    simulator_url: Optional[str] = None  # tool_results=simulate: who role-plays the runtime (null: the teacher)
    simulator_model: Optional[str] = None
    judge_url: Optional[str] = None  # an OpenAI-compatible LLM judge for tasks no rule can verify (data.judge=true)
    judge_model: Optional[str] = None
    min_accepted: int = 1  # fewer accepted samples stops the stage (never train on nothing)
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # teacher spend limit (tokens or money)
    # how the train stage renders a trajectory: template = the student's chat template on the structured
    # messages; react_wire = the exact text the ReAct loop exchanges with a model (tools in the system prompt,
    # calls as Qwen3 XML text, results as <tool_response> user turns), rendered by the student's template:
    # what the eval actor sends, for templates without tool support (SmolLM2)
    train_format: str = "template"
    mask_tool_results: bool = True  # false: tool results are trained on too (the card's method question)

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
