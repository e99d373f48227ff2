"""serve.*: the serve stage's schema (values: conf/defaults/serve.yaml, conf/serve/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional


class Backend(str, Enum):
    llama_cpp = "llama_cpp"
    vllm = "vllm"
    sglang = "sglang"


@dataclass
class MtpSpecConfig:
    enabled: bool = True
    n_max: int = 3
    p_min: float = 0.0
    min_accept_rate: float = 0.05  # the serve start check warns (and tags MLflow) below this
    probe_tokens: int = 16  # tokens the start check generates to read draft_n / draft_n_accepted

    def __post_init__(self) -> None:
        if self.enabled and self.n_max < 1:
            raise ValueError(f"serve.mtp.n_max must be >= 1 when serve.mtp.enabled=true, got {self.n_max}")
        if not 0.0 <= self.p_min <= 1.0:
            raise ValueError(f"serve.mtp.p_min must be in [0, 1], got {self.p_min}")


@dataclass
class AnthropicServeConfig:
    """serve.anthropic: the Anthropic Messages API for Claude Code. The engine serves /v1/messages itself;
    with guard=true the stage also starts our guard in front of it (the measured gaps, docs/serving.md)."""
    guard: bool = True
    port: int = 0  # 0: a free port
    api_key_env: Optional[str] = None  # the guard requires this variable's value as x-api-key (null: open)


@dataclass
class ServeConfig:
    backend: Backend = Backend.llama_cpp
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    ctx_size: int = 4096
    threads: int = 0  # 0: llama.cpp decides
    mtp: MtpSpecConfig = field(default_factory=MtpSpecConfig)
    served_model_name: Optional[str] = None  # defaults to model.name; must not contain '/'
    reasoning_parser: str = "qwen3"
    tool_call_parser: str = "qwen3_xml"
    tensor_parallel_size: int = 1
    max_model_len: int = 32768
    startup_timeout_s: float = 120.0
    # what to serve: a GGUF (llama_cpp) or an HF dir/id (vllm, sglang); None: model.path (llama_cpp converts
    # it to a BF16 GGUF once, under <outputs>/serve/)
    model_path: Optional[str] = None
    quantization: Optional[str] = None  # vllm/sglang --quantization; None: the engine reads config.json
    keep_running: bool = True  # the stage serves until Ctrl-C; false: start, check, log, stop (tests, CI)
    anthropic: AnthropicServeConfig = field(default_factory=AnthropicServeConfig)

    def __post_init__(self) -> None:
        if self.served_model_name and "/" in self.served_model_name:
            raise ValueError(f"serve.served_model_name must not contain '/': {self.served_model_name!r}")
