"""vLLM (`vllm serve`), written for vLLM 0.19-0.21 flag names (see docs/serving.md).

MTP: `--speculative-config '{"method":"mtp","num_speculative_tokens":N}'` uses the checkpoint's own `mtp.*`
head (Qwen3.5/3.6 carry one), so no draft model is passed. Quantization: FP8 (block 128) and NVFP4
checkpoints made by llm-compressor carry `quantization_config` in config.json, which vLLM reads, so no
flag is needed; `serve.quantization` forces `--quantization` when set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cardforge.serve.launchers import option, served_name


def vllm_command(model: str | Path, serve: Any, *, host: str = "127.0.0.1", port: int = 8000,
                 exe: str | None = None) -> list[str]:
    cmd = [exe or "vllm", "serve", str(model),
           "--served-model-name", served_name(serve, model),
           "--host", host, "--port", str(port),
           "--tensor-parallel-size", str(option(serve, "tensor_parallel_size", 1)),
           "--max-model-len", str(option(serve, "max_model_len", 32768)),
           "--reasoning-parser", str(option(serve, "reasoning_parser", "qwen3")),
           "--enable-auto-tool-choice", "--tool-call-parser", str(option(serve, "tool_call_parser", "qwen3_xml"))]
    mtp = option(serve, "mtp", {}) or {}
    if option(mtp, "enabled", False):
        spec = {"method": "mtp", "num_speculative_tokens": int(option(mtp, "n_max", 3))}
        cmd += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    if option(serve, "quantization"):
        cmd += ["--quantization", str(option(serve, "quantization"))]
    return cmd
