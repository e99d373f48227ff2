"""vLLM (`vllm serve`), written for vLLM 0.19-0.21 flag names (see docs/serving.md).

MTP: `--speculative-config '{"method":"mtp","num_speculative_tokens":N}'` uses the checkpoint's own `mtp.*`
head (Qwen3.5/3.6 carry one), so no draft model is passed. Quantization, for what cardforge's quant stage
writes: FP8 block-128 carries `quantization_config` (quant_method fp8) in config.json, which vLLM reads, so
no flag; NVFP4 is written in the ModelOpt layout (hf_quant_config.json, quant_algo NVFP4 = W4A4 or
W4A16_NVFP4), which vLLM serves as `--quantization modelopt_fp4`: the flag is added when the local
checkpoint has that file (`checkpoint_quantization`). `serve.quantization` forces `--quantization` (set
`modelopt_fp4` for an NVFP4 repo given by HF id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cardforge.serve.launchers import max_model_len, quantization, served_name, settings


def vllm_command(model: str | Path, serve: Any, *, host: str = "127.0.0.1", port: int = 8000,
                 exe: str | None = None) -> list[str]:
    s = settings(serve)
    cmd = [exe or "vllm", "serve", str(model),
           "--served-model-name", served_name(s, model),
           "--host", host, "--port", str(port),
           "--tensor-parallel-size", str(s["tensor_parallel_size"]),
           "--max-model-len", str(max_model_len(s, model)),
           "--reasoning-parser", str(s["reasoning_parser"]),
           "--enable-auto-tool-choice", "--tool-call-parser", str(s["tool_call_parser"])]
    if s["mtp"]["enabled"]:
        spec = {"method": "mtp", "num_speculative_tokens": int(s["mtp"]["n_max"])}
        cmd += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    quant = quantization(s, model)
    if quant:
        cmd += ["--quantization", str(quant)]
    return cmd
