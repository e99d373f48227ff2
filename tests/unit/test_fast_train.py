"""cardforge's training kernels (cardforge.train.fast) against transformers + PEFT: same loss, same LoRA gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cardforge.train import bench, fast
from cardforge.train.fast.gdn import chunk_gated_delta_rule, reference
from cardforge.train.fast.loss import linear_cross_entropy

SMALL = dict(bench.TINY, vocab_size=1000, hidden_size=64, intermediate_size=128, head_dim=32,
             linear_key_head_dim=32, linear_value_head_dim=32, mrope_section=[2, 1, 1])


def _gdn_inputs(B=2, T=150, Hk=2, Hv=4, D=32, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, Hk, D, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, Hv, D, generator=g, dtype=dtype)
    a, b = (torch.randn(B, T, Hv, generator=g, dtype=dtype) for _ in range(2))
    return [x.requires_grad_() for x in (q, k, v, a, b)]


def _run_gdn(fn, inputs):
    q, k, v, a, b = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(q, k, v, -F.softplus(a), b.sigmoid())
    out = out[0] if isinstance(out, tuple) else out
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), [x.grad for x in (q, k, v, a, b)]


@pytest.mark.parametrize("scan_op", [False, True])
@pytest.mark.parametrize("T,chunk", [(150, 64), (64, 64), (37, 16), (1, 64)])
def test_gdn_matches_token_recurrence(T, chunk, scan_op):
    inputs = _gdn_inputs(T=T)
    ref_out, ref_grads = _run_gdn(reference, inputs)
    out, grads = _run_gdn(lambda *x: chunk_gated_delta_rule(*x, chunk_size=chunk, scan_op=scan_op), inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name, g, r in zip("qkvab", grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=f"grad of {name}")


@pytest.mark.parametrize("n", [1, 2, 7])
def test_state_scan_op_gradients_and_registration(n):
    """The GDN state scan as a custom op (bench option +scanop): forward = the recurrence, backward = its exact
    gradient (gradcheck, float64); its fake (shape) and autograd registrations pass torch.library.opcheck (what
    torch.compile relies on to keep it opaque); inside bf16 autocast it stays fp32."""
    from cardforge.train.fast.gdn import state_scan

    g = torch.Generator().manual_seed(n)
    m = (0.3 * torch.randn(3, n, 4, 4, generator=g, dtype=torch.float64)).requires_grad_()
    c = torch.randn(3, n, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    s = state_scan(m, c)
    want = [torch.zeros(3, 4, 5, dtype=torch.float64)]
    for i in range(n - 1):
        want.append(m[:, i] @ want[-1] + c[:, i])
    torch.testing.assert_close(s, torch.stack(want, 1))
    assert torch.autograd.gradcheck(state_scan, (m, c))
    mf, cf = m.detach().float().requires_grad_(), c.detach().float().requires_grad_()
    torch.library.opcheck(state_scan, (mf, cf))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sf = state_scan(mf, cf)
        sf.sum().backward()
    assert sf.dtype == mf.grad.dtype == cf.grad.dtype == torch.float32
    torch.testing.assert_close(sf, s.detach().float())


def test_gdn_matches_transformers_chunked():
    from transformers.models.qwen3_5 import modeling_qwen3_5 as m

    inputs = _gdn_inputs(T=130)
    hf_out, hf_grads = _run_gdn(lambda q, k, v, g, b: m.torch_chunk_gated_delta_rule(
        q, k, v, g=g, beta=b, use_qk_l2norm_in_kernel=True), inputs)
    out, grads = _run_gdn(chunk_gated_delta_rule, inputs)
    torch.testing.assert_close(out, hf_out.to(out.dtype), rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, hf_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [7, 1024])
def test_linear_cross_entropy_matches_plain(chunk):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(50, 16, generator=g, dtype=torch.float64)
    weight = torch.randn(300, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 300, (50,), generator=g)
    labels[::5] = -100  # ignored positions count neither in the sum nor in the mean
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    ref = F.cross_entropy(h1 @ weight.t(), labels, ignore_index=-100)
    (ref * 3).backward()
    loss = linear_cross_entropy(h2, weight, labels, chunk=chunk)
    (loss * 3).backward()
    torch.testing.assert_close(loss, ref.to(loss.dtype))
    torch.testing.assert_close(h2.grad, h1.grad)
    assert torch.count_nonzero(h2.grad[::5]) == 0


def _small_lora_model():
    model = bench.build_model(bench.text_config(SMALL), "cpu", torch.float32, seed=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = bench.add_lora(model)
    with torch.no_grad():  # PEFT starts B at 0: give the adapters a nonzero output so their gradients all differ
        for n, p in bench.lora_params(model).items():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model


def test_training_step_matches_transformers_peft():
    """The benchmark's two variants on one model and batch: the plain transformers + PEFT loss and every LoRA
    gradient equal cardforge's (fp32, dropout masks seeded alike)."""
    model = _small_lora_model()
    batch = bench.make_batch(SMALL["vocab_size"], 100, "cpu")
    results = {}
    for name in ("plain", "cardforge"):
        v = bench.VARIANTS[name]
        v = bench.Variant(v.name, v.kernels, v.loss, autocast=False)
        bench.configure(model, v)
        assert fast.enabled(model) == (name == "cardforge")
        torch.manual_seed(7)
        loss = bench.loss_fn(model, batch, v)
        loss.backward()
        results[name] = (loss.detach(), {n: p.grad.clone() for n, p in bench.lora_params(model).items()})
        model.zero_grad(set_to_none=True)
    (l0, g0), (l1, g1) = results["plain"], results["cardforge"]
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert len(g0) == len(g1) > 0 and any("in_proj_qkv" in n for n in g0)
    for n in g0:
        assert torch.count_nonzero(g0[n]) > 0, n
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


def test_compiled_layers_match_eager_and_compile_once_per_layer_kind():
    """Regional compilation (`trainer.compile_layers`): the compiled decoder layers give the eager kernels' loss and
    LoRA gradients, with gradient checkpointing and with compile's memory budget instead of checkpointing; 4 layers
    of 2 kinds compile 2 graphs (a recompile per layer would be 4 and, past dynamo's limit, silently eager)."""
    import torch._dynamo.utils as dynamo_utils

    model = _small_lora_model()
    for m in model.modules():  # the compiled and eager dropout masks differ: compare with dropout off
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batch = bench.make_batch(SMALL["vocab_size"], 100, "cpu")
    results = {}
    for spec in ("cardforge", "cardforge+layers", "cardforge+layers@0.3"):
        v = bench.parse_variant(spec)
        v.autocast = False
        bench.configure(model, v)
        dynamo_utils.counters.clear()
        loss = bench.loss_fn(model, batch, v)
        loss.backward()
        results[spec] = (loss.detach(), {n: p.grad.clone() for n, p in bench.lora_params(model).items()})
        model.zero_grad(set_to_none=True)
        if v.layers:
            assert dynamo_utils.counters["stats"]["unique_graphs"] == 2, dict(dynamo_utils.counters["stats"])
            layers = model.get_base_model().model.layers
            assert all(layer._compiled_call_impl is not None for layer in layers)
            assert all(layer.gradient_checkpointing == (v.memory_budget is None) for layer in layers)
    fast.disable(model)
    assert all(layer._compiled_call_impl is None for layer in model.get_base_model().model.layers)
    l0, g0 = results["cardforge"]
    for spec in ("cardforge+layers", "cardforge+layers@0.3"):
        l1, g1 = results[spec]
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=f"{spec}: {n}")


@pytest.mark.slow
def test_compiled_layers_with_the_scan_op_match_eager():
    """+scanop: the compiled layers with the GDN state scan as an opaque custom op (no unrolled loop in the graph)
    give the eager kernels' loss and LoRA gradients, at two lengths."""
    model = _small_lora_model()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for seq in (100, 192):
        batch = bench.make_batch(SMALL["vocab_size"], seq, "cpu")
        results = {}
        for spec in ("cardforge", "cardforge+layers+scanop"):
            v = bench.parse_variant(spec)
            v.autocast = False
            bench.configure(model, v)
            loss = bench.loss_fn(model, batch, v)
            loss.backward()
            results[spec] = (loss.detach(), {n: p.grad.clone() for n, p in bench.lora_params(model).items()})
            model.zero_grad(set_to_none=True)
        (l0, g0), (l1, g1) = results.values()
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=f"seq {seq}: {n}")
    fast.disable(model)


@pytest.mark.slow
def test_compiled_dropout_is_replayed_by_the_recompute():
    """With compiled layers and LoRA dropout on, gradient checkpointing's recompute draws the same masks as the
    forward: the gradients equal those of a run that keeps every activation."""
    model = _small_lora_model()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.3
    batch = bench.make_batch(SMALL["vocab_size"], 100, "cpu")
    grads = {}
    for spec in ("cardforge+layers", "cardforge+layers:4"):
        v = bench.parse_variant(spec)
        v.autocast = False
        bench.configure(model, v)
        torch.manual_seed(3)
        loss = bench.loss_fn(model, batch, v)
        loss.backward()
        grads[spec] = {n: p.grad.clone() for n, p in bench.lora_params(model).items()}
        model.zero_grad(set_to_none=True)
    fast.disable(model)
    a, b = grads.values()
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("spec, want", [
    ("cardforge", dict(layers=False, tf32=False, no_recompute_layers=0, memory_budget=None)),
    ("cardforge-compile", dict(compile=True, layers=False)),
    ("cardforge+layers+tf32:8", dict(layers=True, tf32=True, no_recompute_layers=8)),
    ("cardforge+layers+tf32@0.1", dict(layers=True, tf32=True, memory_budget=0.1)),
    ("cardforge+layers+scanop@0.1", dict(layers=True, scan_op=True, memory_budget=0.1)),
])
def test_bench_variant_specs(spec, want):
    v = bench.parse_variant(spec)
    assert v.name == spec and v.kernels == "cardforge"
    for k, value in want.items():
        assert getattr(v, k) == value, k


@pytest.mark.parametrize("spec, error", [("cardforge+fast", "unknown option 'fast'"),
                                         ("nope", "unknown variant 'nope'"),
                                         ("cardforge@0.1", "needs \\+layers"),
                                         ("plain+layers", "cardforge's step only")])
def test_bench_variant_spec_errors(spec, error):
    with pytest.raises(ValueError, match=error):
        bench.parse_variant(spec)


def test_generation_with_cache_keeps_transformers_path():
    model = bench.build_model(bench.text_config(SMALL), "cpu", torch.float32, seed=0).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert fast.enable(model) == 3  # 3 GDN layers of 4
    after = model.generate(ids, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(after, before)
    with torch.no_grad():  # the no-cache forward (training / scoring) goes through cardforge's kernel, same logits
        ours = model(ids, use_cache=False).logits
        fast.disable(model)
        theirs = model(ids, use_cache=False).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_unsupported_module_is_a_clear_error():
    model = bench.build_model(bench.text_config(SMALL), "cpu", torch.float32)
    gdn = next(m for m in model.modules() if type(m).__name__.endswith("GatedDeltaNet"))
    del gdn.in_proj_z
    with pytest.raises(RuntimeError, match="in_proj_z.*trainer.kernels=transformers"):
        fast.enable(model)


def test_bench_cli_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--arch", "tiny", "--layers", "4", "--seq", "64", "--steps", "1", "--warmup", "0",
                       "--variants", "plain", "cardforge", "--out", str(out)]) == 0
    import json

    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert rows["plain"]["status"] == rows["cardforge"]["status"] == "ok"
    assert abs(rows["plain"]["first_loss"] - rows["cardforge"]["first_loss"]) < 0.05  # fp32 vs bf16 autocast
    assert "cardforge / plain" in capsys.readouterr().out


@pytest.mark.slow
def test_scaling_harness_runs_the_stage_on_1_and_2_ranks(tmp_path, monkeypatch):
    """`python -m cardforge.train.scaling` on CPU (DDP over gloo, the tiny architecture): the real train stage runs
    once per device count on the same checkpoint and fixed-length samples; the report scales one rank's median
    tokens/s by the device count and divides by the 1-device run (the efficiency). FSDP needs GPUs (issue #10
    item 5 runs `--strategy fsdp --devices 1 2` there)."""
    import json

    from cardforge.train import scaling

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = tmp_path / "scaling.json"
    assert scaling.main(["--arch", "tiny", "--layers", "4", "--accelerator", "cpu", "--strategy", "ddp", "--devices",
                         "1", "2", "--seq", "64", "--steps", "3", "--warmup", "1", "--workdir", str(tmp_path / "w"),
                         "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    one, two = data["rows"]
    assert one["status"] == two["status"] == "ok" and "trainer=ddp" in two["command"]
    assert "trainer.devices=2" in two["command"] and "trainer.devices=1" in one["command"]
    assert len(one["tokens_per_s_per_step"]) == len(two["tokens_per_s_per_step"]) == 3
    assert two["global_tok_s"] == pytest.approx(2 * two["rank_tok_s"]) and one["efficiency"] == pytest.approx(1.0)
    assert two["efficiency"] == pytest.approx(two["global_tok_s"] / (2 * one["global_tok_s"]))
    # each rank trained its own share: the 2-rank run's stage saw twice the samples
    rows = (tmp_path / "w" / "ddp-2" / "data" / "trajectories.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 3 and all(len(json.loads(r)["input_ids"]) == 64 for r in rows)
