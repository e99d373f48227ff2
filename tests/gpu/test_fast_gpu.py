"""cardforge.train.fast on CUDA in bf16: the training step agrees with transformers + PEFT (issue #10's correctness
check on a small config; the throughput numbers come from `python -m cardforge.train.bench`)."""

from __future__ import annotations

import pytest
import torch

from cardforge.train import bench

pytestmark = pytest.mark.gpu

SMALL = dict(bench.QWEN36_27B, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
             head_dim=256, linear_num_key_heads=4, linear_num_value_heads=12, vocab_size=32000)


@pytest.mark.parametrize("spec", ["cardforge", "cardforge+layers+tf32@0.1", "cardforge+layers+tf32",
                                  "cardforge+layers+tf32+scanop"])
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


def _model():
    model = bench.build_model(bench.text_config(SMALL), "cuda", torch.bfloat16, seed=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = bench.add_lora(model, dropout=0.0)
    with torch.no_grad():
        for n, p in bench.lora_params(model).items():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("spec", ["cardforge", "cardforge+layers+tf32", "cardforge+layers+tf32+scanop",
                                  "cardforge+layers+tf32+scanop+offload",
                                  "cardforge+layers+tf32+scanop+offload+corerc@0.3"])  # the 32k mix's setting
def test_packed_row_matches_plain_sample_by_sample(spec):
    """Issue #20: one packed row (5 samples, 2 to 700 tokens, a padding tail; flash varlen attention, GDN and conv
    resets) gives the token-weighted loss and the LoRA gradients of plain transformers + PEFT run on each sample
    alone (batch 1, unpacked), in bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from cardforge.train import fast, packing
    from cardforge.train.data import collate

    model = _model()
    g = torch.Generator().manual_seed(5)
    lengths = [700, 300, 2, 500, 400]
    from cardforge.train.data import Sample

    samples = [Sample(torch.randint(0, SMALL["vocab_size"], (n,), generator=g).tolist(), [1] * n) for n in lengths]
    n_targets = sum(n - 1 for n in lengths)
    plain = bench.parse_variant("plain")
    bench.configure(model, plain)
    total = 0.0
    for s in samples:
        b = {k: t.cuda() for k, t in collate([s], pad_id=0).items()}
        loss = bench.loss_fn(model, b, plain) * ((len(s.input_ids) - 1) / n_targets)
        loss.backward()
        total += float(loss)
    g0 = {n: p.grad.float().flatten() for n, p in bench.lora_params(model).items()}
    model.zero_grad(set_to_none=True)
    v = bench.parse_variant(spec)
    bench.configure(model, v)
    batch = packing.collate_packed([packing.PackedRow(tuple(samples))], pad_id=0, row_len=2048)
    batch = {k: (t if k == "attn_meta" else t.cuda()) for k, t in batch.items()}
    loss = bench.loss_fn(model, batch, v)
    loss.backward()
    g1 = {n: p.grad.float().flatten() for n, p in bench.lora_params(model).items()}
    model.zero_grad(set_to_none=True)
    from cardforge.train.fast import offload

    offload.disable(model)
    fast.disable(model)
    torch.backends.cuda.matmul.allow_tf32 = False
    cos = {n: torch.nn.functional.cosine_similarity(g0[n], g1[n], dim=0).item() for n in g0}
    name = min(cos, key=cos.get)
    print(f"[gpu-report] packed {spec}: loss plain per sample {total:.5f} packed {float(loss):.5f}; "
          f"min grad cosine {cos[name]:.4f} ({name})")
    assert abs(total - float(loss)) < 0.02
    assert cos[name] > 0.98


def test_flash_varlen_attention_equals_block_diagonal_mask():
    """The CUDA packed-attention path (flash varlen op, grouped KV heads, head_dim 256) equals SDPA with the
    block-diagonal causal mask: outputs and q/k/v gradients, bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from cardforge.train import packing
    from cardforge.train.data import Sample
    from cardforge.train.fast.attention import attention

    lengths = [300, 1, 517, 64]
    batch = packing.collate_packed([packing.PackedRow(tuple(Sample([1] * n, [1] * n) for n in lengths))], 0, 1024)
    pos = batch["position_ids"].cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 8, 1024, 256, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k, v = (torch.randn(1, 2, 1024, 256, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
            for _ in range(2))
    w = torch.randn(1, 1024, 8, 256, device="cuda", dtype=torch.bfloat16, generator=g)
    outs = []
    for flash in (True, False):
        for x in (q, k, v):
            x.grad = None
        kw = dict(cf_pos=pos, cf_cu_seqlens=batch["cu_seqlens"].cuda(), cf_attn_meta=batch["attn_meta"]) if flash \
            else dict(cf_pos=pos)
        out, _ = attention(None, q, k, v, None, scaling=256 ** -0.5, **kw)
        (out.float() * w.float()).sum().backward()
        outs.append([out.float()] + [x.grad.float() for x in (q, k, v)])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *outs):
        err = ((a - b).norm() / b.norm()).item()
        print(f"[gpu-report] varlen vs mask {name}: rel err {err:.2e}")
        assert err < 2e-2, name


def _median_ms(fn, reps: int = 5) -> float:
    fn()  # warm-up (Triton compiles on the first call)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("n", [64, 512])
def test_gdn_state_scan_triton_matches_loop(n, tf32):
    """The GDN chunk-state scan in one Triton launch (the ops' CUDA dispatch) vs the `baddbmm` loops, at the 27B's
    shapes (48 value heads, Dk = Dv = 128; n = 64 / 512 chunks: 4k / 32k tokens): forward states, the backward's
    dM and dC, both against a float64 loop: within 1e-5 whether or not allow_tf32 is on (the Triton scan stays full
    fp32: its TF32 mode measured 4e-3, see `gdn._scan_triton`), and not much worse than the loop (which uses TF32
    when allowed). Prints both paths' times (median of 5, CUDA events) and, at n = 512, other kernel configs."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from cardforge.train.fast import gdn

    if gdn._triton_kernel() is None:
        pytest.skip("needs triton")
    bh, d = 48, 128
    g = torch.Generator(device="cuda").manual_seed(n)
    m = 0.9 * torch.eye(d, device="cuda") + 0.05 * d ** -0.5 * torch.randn(bh, n, d, d, device="cuda", generator=g)
    c, grad = (torch.randn(bh, n, d, d, device="cuda", generator=g) for _ in range(2))
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        assert gdn._use_triton(m, c)
        assert gdn._scan_triton(m, c, reverse=False) is not None, "no kernel config fit this GPU (loop fallback)"
        config = gdn._triton_config_cache[(m.device, d, d, "ieee", False)]
        s, s_loop = gdn.state_scan(m, c), gdn._scan_loop(m, c)
        dm, dc = gdn.state_scan_backward(m, s_loop, grad)
        dc_loop = gdn._scan_backward_loop(m, grad)
        dm_loop = dc_loop @ s_loop.transpose(-1, -2)
        s64 = gdn._scan_loop(m.double(), c.double())
        dc64 = gdn._scan_backward_loop(m.double(), grad.double())
        dm64 = dc64 @ s64.transpose(-1, -2)
        for name, got, loop, ref in (("states", s, s_loop, s64), ("dC", dc, dc_loop, dc64), ("dM", dm, dm_loop, dm64)):
            err = ((got.double() - ref).norm() / ref.norm()).item()
            err_loop = ((loop.double() - ref).norm() / ref.norm()).item()
            print(f"[gpu-report] scan n={n} tf32={tf32} {name}: rel err vs fp64 triton {err:.2e} loop {err_loop:.2e}")
            assert err < 1e-5, name
            assert err < 3 * err_loop + 1e-6, name
        t = {"fwd triton": _median_ms(lambda: gdn.state_scan(m, c)),
             "fwd loop": _median_ms(lambda: gdn._scan_loop(m, c)),
             "bwd triton": _median_ms(lambda: gdn.state_scan_backward(m, s, grad)),
             "bwd loop": _median_ms(lambda: (lambda dcl: (dcl @ s.transpose(-1, -2), dcl))(
                 gdn._scan_backward_loop(m, grad)))}
        print(f"[gpu-report] scan n={n} tf32={tf32} config (BV, warps, stages) {config}: "
              + ", ".join(f"{k} {v:.3f} ms" for k, v in t.items())
              + f"; speedup fwd {t['fwd loop'] / t['fwd triton']:.1f}x bwd {t['bwd loop'] / t['bwd triton']:.1f}x")
        if n == 512:
            configs = [(128, 8, 1), (64, 8, 2), (64, 8, 1), (64, 4, 2), (32, 8, 2), (32, 4, 2), (32, 4, 3), (16, 8, 1),
                       (16, 4, 3)]
            for cfg in configs:
                for reverse in (False, True):
                    if gdn._scan_triton(m, c, reverse=reverse, config=cfg) is None:
                        print(f"[gpu-report] scan config {cfg} reverse={reverse}: out of resources")
                        continue
                    ms = _median_ms(lambda: gdn._scan_triton(m, c, reverse=reverse, config=cfg))
                    print(f"[gpu-report] scan n={n} tf32={tf32} config {cfg} reverse={reverse}: {ms:.3f} ms")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def test_flat_bitsandbytes_step_equals_per_tensor_and_is_faster():
    """trainer.flat_optimizer on CUDA: PagedAdamW8bit over flat buffers gives bit-identical LoRA tensors to
    bitsandbytes stepping each tensor (which launches and synchronises once per tensor); the time of one step of
    each, side by side, for the 27B's LoRA tensor shapes (the first 8 of 64 layers: ~125 tensors)."""
    import time

    pytest.importorskip("bitsandbytes")
    from cardforge.train.optim import FlatOptimizer, paged_adamw_8bit

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = bench.build_model(bench.text_config(bench.QWEN36_27B, layers=8), "meta", torch.bfloat16)
    model = bench.add_lora(model)
    shapes = [tuple(p.shape) for p in bench.lora_params(model).values()]

    def params():
        g = torch.Generator(device="cuda").manual_seed(0)
        return [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g) * 0.02) for s in shapes]

    make, make_small = paged_adamw_8bit(1e-4, 0.01)
    ref, flat = params(), params()
    opts = {"per_tensor": (ref, make(ref)), "flat": (flat, FlatOptimizer(flat, make, make_small=make_small))}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for step in range(6):
        g = torch.Generator(device="cuda").manual_seed(step)
        grads = [torch.randn(s, device="cuda", generator=g) for s in shapes]
        for name, (ps, opt) in opts.items():
            opt.zero_grad()
            for p, gr in zip(ps, grads):
                if p.grad is None:
                    p.grad = gr.clone()
                else:
                    p.grad.copy_(gr)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.step()
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    for a, b in zip(ref, flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    med = {k: sorted(v[1:])[len(v[1:]) // 2] for k, v in times.items()}
    print(f"\n[flat optimizer] {len(shapes)} LoRA tensors: per-tensor step {med['per_tensor'] * 1e3:.2f} ms, flat "
          f"{med['flat'] * 1e3:.2f} ms ({med['per_tensor'] / med['flat']:.1f}x)")
    assert med["flat"] < med["per_tensor"]
