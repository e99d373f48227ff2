"""What each quant output of a checkpoint weighs, from its tensor inventory (names -> shapes), by the SAME
module rules the writers apply (fp8.ignored_modules, nvfp4.TIERS, the GGUF converter's split into the text
GGUF and the vision projector). The pipeline plan uses it with cardforge.core.models.layout.inventory(), so
`make plan EXP=qwen36_27b_card` reports the real checkpoint's sizes without the weights.

Bytes per element: BF16 2; FP8 1 + one fp32 scale per 128x128 block; NVFP4 1/2 + one e4m3 scale per 16 (+ two
fp32 scalars per module); GGUF tiers: llama.cpp's published bits per weight of the mix
(cardforge.core.artifacts.GGUF_BPW) over the text GGUF's tensors (language model + lm_head + MTP head; the tower
goes to the mmproj file).

The stages' free-space preflights (quant, mtp, eval: cardforge.core.io.preflight_output) size the GGUFs they
will write the same way, from a checkpoint on disk: checkpoint_inventory() reads the tensor shapes from the
safetensors headers (no weights read), gguf_bytes() applies GGUF_BPW.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from cardforge.core.artifacts import GGUF_BPW  # the one table, kept in core: the plan reads it without this package
from cardforge.quant import fp8, nvfp4


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def bf16_bytes(inventory: dict) -> int:
    return sum(2 * _numel(shape) for shape, _ in inventory.values())


def fp8_bytes(inventory: dict, block: int = 128) -> int:
    shapes = {n: shape for n, (shape, _) in inventory.items()}
    skip = set(fp8.ignored_modules(shapes, block))
    total = 0
    for name, shape in shapes.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and len(shape) == 2 and not fp8.ALWAYS_SKIP.search(name) and module not in skip:
            total += _numel(shape) + 4 * (-(-shape[0] // block)) * (-(-shape[1] // block))
        else:
            total += 2 * _numel(shape)
    return total


def nvfp4_bytes(inventory: dict, tier: str) -> int:
    pattern = nvfp4.TIERS[tier]
    total = 0
    for name, (shape, _) in inventory.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and len(shape) == 2 and pattern.match(module) and shape[1] % nvfp4.GROUP == 0:
            total += _numel(shape) // 2 + _numel(shape) // nvfp4.GROUP + 4 + (4 if tier == "w4a4" else 0)
        else:
            total += 2 * _numel(shape)
    return total


def text_gguf_params(inventory: dict) -> int:
    """Elements of the text GGUF (everything but the vision tower)."""
    return sum(_numel(s) for n, (s, _) in inventory.items() if not n.startswith("model.visual."))


def mmproj_bytes(inventory: dict) -> int:
    """The BF16 projector file (the converter keeps the patch embedding in F32: 4 bytes)."""
    return sum((4 if ".patch_embed." in n else 2) * _numel(s) for n, (s, _) in inventory.items()
               if n.startswith("model.visual."))


def estimate(inventory: dict, gguf_bpw: dict[str, float], fp8_block: int = 128,
             nvfp4_tiers: tuple[str, ...] = ("w4a16", "w4a4")) -> dict[str, int]:
    """Bytes of each output: 'BF16' (the checkpoint), 'FP8', 'NVFP4-W4A16' / 'NVFP4-W4A4', 'GGUF-<tier>' for each
    tier of gguf_bpw, and 'mmproj' (0 for a text-only checkpoint)."""
    text = text_gguf_params(inventory)
    out = {"BF16": bf16_bytes(inventory), "FP8": fp8_bytes(inventory, fp8_block)}
    for tier in nvfp4_tiers:
        out[f"NVFP4-{tier.upper()}"] = nvfp4_bytes(inventory, tier)
    for tier, bpw in gguf_bpw.items():
        out[f"GGUF-{tier}"] = int(text * bpw / 8)
    out["mmproj"] = mmproj_bytes(inventory)
    return out


def checkpoint_inventory(model_dir: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every tensor in the *.safetensors files of `model_dir`, read from their headers
    (8 bytes of length + JSON: no weights are read, a 27B checkpoint takes milliseconds)."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        out.update({k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"})
    return out


def gguf_bytes(inventory: dict, tier: str, vocab_bytes: int = 0) -> int:
    """The text GGUF of `inventory` at `tier` (a GGUF_BPW key: "BF16", "Q8_0", ...) with the tokenizer its header
    carries (`vocab_bytes`: tokenizer_bytes() of the checkpoint). On the embedded models' BF16 GGUFs this is
    within 0.7% of the file llama.cpp writes (smollm2-135m +0.6%, tiny-qwen36-vl-mtp -0.4%; without the
    tokenizer 0.7% and 5.8% under)."""
    return int(text_gguf_params(inventory) * GGUF_BPW.get(tier, 8.0) / 8) + vocab_bytes


def tokenizer_bytes(model_dir: str | Path) -> int:
    """tokenizer.json's size: about what the GGUF header stores of the vocabulary and merges."""
    p = Path(model_dir) / "tokenizer.json"
    return p.stat().st_size if p.is_file() else 0


def part_bytes(inventory: dict, prefix: str, bytes_per_element: int = 2) -> int:
    """The tensors whose names start with `prefix` ("mtp." : the MTP head) at `bytes_per_element` (BF16: 2)."""
    return sum(bytes_per_element * _numel(s) for n, (s, _) in inventory.items() if n.startswith(prefix))
