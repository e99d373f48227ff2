"""cardforge.train.fast on CUDA in bf16: the training step agrees with transformers + PEFT (issue #10's correctness
check on a small config; the throughput numbers come from `python -m cardforge.train.bench`)."""

from __future__ import annotations

import pytest
import torch

from cardforge.train import bench

pytestmark = pytest.mark.gpu

SMALL = dict(bench.QWEN36_27B, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
             head_dim=256, linear_num_key_heads=4, linear_num_value_heads=12, vocab_size=32000)


@pytest.mark.parametrize("spec", ["cardforge", "cardforge+layers+tf32@0.1", "cardforge+layers+tf32"])
def test_bf16_step_matches_transformers_peft(spec):
    """`spec`: cardforge's step as the bench names it (compiled layers, TF32 GDN matmuls, compile's memory budget
    instead of checkpointing): the same loss and LoRA gradients as plain transformers + PEFT."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = bench.build_model(bench.text_config(SMALL), "cuda", torch.bfloat16, seed=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # no dropout: CUDA's dropout draws a different mask for a bf16 than for an fp32 input (PEFT casts x to the
    # adapter's fp32 first, cardforge does not), which would compare two different dropout samples
    model = bench.add_lora(model, dropout=0.0)
    with torch.no_grad():
        for n, p in bench.lora_params(model).items():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    batch = bench.make_batch(SMALL["vocab_size"], 1024, "cuda")
    out = {}
    for name in ("plain", spec):
        v = bench.parse_variant(name)
        bench.configure(model, v)
        torch.manual_seed(7)
        loss = bench.loss_fn(model, batch, v)
        loss.backward()
        out[name] = (float(loss), {n: p.grad.float().flatten() for n, p in bench.lora_params(model).items()})
        model.zero_grad(set_to_none=True)
    from cardforge.train import fast

    fast.disable(model)
    torch.backends.cuda.matmul.allow_tf32 = False
    (l0, g0), (l1, g1) = out["plain"], out[spec]
    assert abs(l0 - l1) < 0.02, (l0, l1)  # bf16 model vs bf16 autocast + fp32 GDN / CE: ~1e-3 apart
    cos = {n: torch.nn.functional.cosine_similarity(g0[n], g1[n], dim=0).item() for n in g0}
    name = min(cos, key=cos.get)
    worst = cos[name]
    print(f"[gpu-report] fast: loss plain {l0:.5f} {spec} {l1:.5f}; min grad cosine {worst:.4f} ({name})")
    assert worst > 0.98
