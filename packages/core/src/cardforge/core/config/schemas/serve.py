"""serve.*: the serve stage's schema (values: conf/defaults/serve.yaml, conf/serve/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING


class Backend(str, Enum):
    llama_cpp = "llama_cpp"
    vllm = "vllm"
    sglang = "sglang"


@dataclass
class MtpSpecConfig:
    enabled: bool = MISSING
    n_max: int = MISSING
    p_min: float = MISSING
    min_accept_rate: float = MISSING
    probe_tokens: int = MISSING

    def __post_init__(self) -> None:
        if self.enabled and self.n_max < 1:
            raise ValueError(f"serve.mtp.n_max must be >= 1 when serve.mtp.enabled=true, got {self.n_max}")
        if not 0.0 <= self.p_min <= 1.0:
            raise ValueError(f"serve.mtp.p_min must be in [0, 1], got {self.p_min}")


@dataclass
class AnthropicServeConfig:
    """serve.anthropic: the Anthropic Messages API for Claude Code. The engine serves /v1/messages itself;
    with guard=true the stage also starts our guard in front of it (the measured gaps, docs/serving.md)."""
    guard: bool = MISSING
    port: int = MISSING
    api_key_env: Optional[str] = MISSING


@dataclass
class ServeConfig:
    backend: Backend = MISSING
    host: str = MISSING
    port: int = MISSING
    ctx_size: int = MISSING
    threads: int = MISSING
    mtp: MtpSpecConfig = MISSING
    served_model_name: Optional[str] = MISSING
    reasoning_parser: str = MISSING
    tool_call_parser: str = MISSING
    tensor_parallel_size: int = MISSING
    max_model_len: int = MISSING
    startup_timeout_s: float = MISSING
    model_path: Optional[str] = MISSING
    mmproj: Optional[str] = MISSING
    quantization: Optional[str] = MISSING
    keep_running: bool = MISSING
    anthropic: AnthropicServeConfig = MISSING

    def __post_init__(self) -> None:
        if self.served_model_name and "/" in self.served_model_name:
            raise ValueError(f"serve.served_model_name must not contain '/': {self.served_model_name!r}")
