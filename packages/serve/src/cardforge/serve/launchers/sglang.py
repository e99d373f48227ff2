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

from cardforge.serve.launchers import max_model_len, quantization, served_name, settings


def sglang_command(model: str | Path, serve: Any, *, host: str = "127.0.0.1", port: int = 30000,
                   exe: str | None = None) -> list[str]:
    s = settings(serve)
    cmd = [*(exe.split() if exe else ["python", "-m", "sglang.launch_server"]),
           "--model-path", str(model),
           "--served-model-name", served_name(s, model),
           "--host", host, "--port", str(port),
           "--tp-size", str(s["tensor_parallel_size"]),
           "--context-length", str(max_model_len(s, model)),
           "--reasoning-parser", str(s["reasoning_parser"]),
           "--tool-call-parser", str(s["tool_call_parser"])]  # conf/serve/sglang.yaml: qwen3_coder
    if s["mtp"]["enabled"]:
        n = int(s["mtp"]["n_max"])
        cmd += ["--speculative-algorithm", "EAGLE", "--speculative-num-steps", str(n),
                "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", str(n + 1)]
    quant = quantization(s, model)
    if quant:
        cmd += ["--quantization", str(quant)]
    return cmd
