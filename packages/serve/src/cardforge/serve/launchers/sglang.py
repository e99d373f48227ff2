"""SGLang (`python -m sglang.launch_server`), written for SGLang 0.5.x flag names (see docs/serving.md).

MTP: SGLang runs a model's built-in MTP/NextN head through its EAGLE machinery (`NEXTN` is an alias of
`EAGLE`); for Qwen3.5/3.6 and Qwen3-Next it uses a chain: topk 1, num-steps N, num-draft-tokens N + 1.
Tool calls in the Qwen3-Coder XML format are parsed by `qwen3_coder`. FP8 block-128 checkpoints are
detected from config.json (`quantization_config`); our NVFP4 checkpoints (ModelOpt layout,
hf_quant_config.json) get `--quantization modelopt_fp4`; `serve.quantization` forces `--quantization`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cardforge.serve.launchers import option, quantization, served_name


def sglang_command(model: str | Path, serve: Any, *, host: str = "127.0.0.1", port: int = 30000,
                   exe: str | None = None) -> list[str]:
    cmd = [*(exe.split() if exe else ["python", "-m", "sglang.launch_server"]),
           "--model-path", str(model),
           "--served-model-name", served_name(serve, model),
           "--host", host, "--port", str(port),
           "--tp-size", str(option(serve, "tensor_parallel_size", 1)),
           "--context-length", str(option(serve, "max_model_len", 32768)),
           "--reasoning-parser", str(option(serve, "reasoning_parser", "qwen3")),
           "--tool-call-parser", str(option(serve, "tool_call_parser", "qwen3_coder"))]
    mtp = option(serve, "mtp", {}) or {}
    if option(mtp, "enabled", False):
        n = int(option(mtp, "n_max", 3))
        cmd += ["--speculative-algorithm", "EAGLE", "--speculative-num-steps", str(n),
                "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", str(n + 1)]
    quant = quantization(serve, model)
    if quant:
        cmd += ["--quantization", str(quant)]
    return cmd
