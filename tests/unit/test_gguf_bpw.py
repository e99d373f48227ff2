"""The GGUF tiers' bits per weight: one table (cardforge.core.artifacts.GGUF_BPW) for the plan and the stages'
free-space preflights, holding llama.cpp's published figures, importable by the plan without torch."""

from __future__ import annotations

import subprocess
import sys

from cardforge.core.config.compose import compose
from cardforge.core.models import layout

# llama.cpp tools/quantize/README.md, bits/weight on Llama-3.1-8B (Q4_K_M 4.8944, Q5_K_M 5.7036, Q6_K 6.5633,
# Q8_0 8.5008); Q4_0 / Q5_0: 32 weights of 4 / 5 bits + one fp16 scale a block
PUBLISHED = {"BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.70, "Q5_0": 5.5, "Q4_K_M": 4.89, "Q4_0": 4.5}
# the seed card's Qwen3.6-27B GGUF files, GB (as tests/unit/test_plan_layout.py)
CARD_GGUF_GB = {"Q4_K_M": 16.8, "Q5_K_M": 19.5, "Q6_K": 22.4, "Q8_0": 29.0}


def test_the_plan_and_the_preflights_read_one_table_of_llama_cpps_figures():
    from cardforge.pipeline import plan
    from cardforge.quant import sizes

    assert plan.GGUF_BPW is sizes.GGUF_BPW  # one table, not two copies to keep in step
    assert plan.GGUF_BPW == PUBLISHED

    from cardforge.core.artifacts import GGUF_BPW  # its home: core, which the plan needs anyway

    assert GGUF_BPW is plan.GGUF_BPW


def test_the_preflights_size_the_cards_gguf_files_within_one_percent():
    """gguf_bytes (quant/mtp/eval free-space checks) on the real Qwen3.6-27B layout vs the published files; the
    table it had before (Q4_K_M 4.85, Q6_K 6.6) put Q4_K_M 1.4% under."""
    from cardforge.quant import sizes

    inv = layout.inventory(layout.known_config(compose("pipeline", ["experiment=qwen36_27b_card"]).model))
    for tier, gb in CARD_GGUF_GB.items():
        assert abs(sizes.gguf_bytes(inv, tier) / 1e9 - gb) / gb < 0.01, (tier, sizes.gguf_bytes(inv, tier) / 1e9)


def test_the_plan_imports_without_torch_or_the_quant_package():
    code = ("import sys, cardforge.pipeline.plan as p; assert p.GGUF_BPW; "
            "print(sorted(m for m in ('torch', 'cardforge.quant') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
