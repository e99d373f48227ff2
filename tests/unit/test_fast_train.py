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
    ("cardforge+layers+scanop+offload", dict(offload=True, memory_budget=None, core_groups=0)),
    ("cardforge+layers+scanop+offload+corerc@0.3", dict(offload=True, core_groups=4, memory_budget=0.3)),
    # the optimizer: flat buffers like the stage (trainer.flat_optimizer), +pertensor as plain transformers + PEFT
    ("cardforge+layers@0.1", dict(flat_optimizer=True, cpp_wrapper=False, cudagraphs=False)),
    ("cardforge+layers+pertensor+cppwrap+cudagraphs@0.1", dict(flat_optimizer=False, cpp_wrapper=True,
                                                               cudagraphs=True)),
])
def test_bench_variant_specs(spec, want):
    v = bench.parse_variant(spec)
    assert v.name == spec and v.kernels == "cardforge"
    for k, value in want.items():
        assert getattr(v, k) == value, k


@pytest.mark.parametrize("spec, error", [("cardforge+fast", "unknown option 'fast'"),
                                         ("nope", "unknown variant 'nope'"),
                                         ("cardforge@0.1", "needs \\+layers"),
                                         ("cardforge+offload@0.1", "needs \\+layers"),
                                         ("plain+layers", "cardforge's step only")])
def test_bench_variant_spec_errors(spec, error):
    with pytest.raises(ValueError, match=error):
        bench.parse_variant(spec)


def test_plain_steps_bitsandbytes_per_tensor():
    assert bench.parse_variant("plain").flat_optimizer is False  # what a user of transformers + PEFT runs


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
    """`python -m cardforge.train.scaling` on CPU (FSDP2 over gloo, the default strategy, the tiny architecture):
    the real train stage runs once per device count on the same checkpoint and fixed-length samples; the report
    scales one rank's median tokens/s by the device count and divides by the 1-device run (the efficiency). The
    GPU measurement (issue #10 item 5, issue #21 item 3) is the same command with --accelerator gpu."""
    import json

    from cardforge.train import scaling

    import os

    import mlflow
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    out = tmp_path / "scaling.json"
    # as in a full test run: an earlier mlflow.set_tracking_uri in this process (other tests, a notebook) pins
    # mlflow's global URI, and $MLFLOW_TRACKING_URI, which the stage runs (children) follow, names another store;
    # the harness must read the store its children log to (it read the pinned one: "no train/tokens_per_s")
    uri_before = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        assert scaling.main(["--arch", "tiny", "--layers", "4", "--accelerator", "cpu", "--devices",
                             "1", "2", "--seq", "64", "--steps", "3", "--warmup", "1", "--workdir",
                             str(tmp_path / "w"), "--out", str(out)]) == 0
    finally:
        mlflow.set_tracking_uri(uri_before)  # None: unpinned again (and the variable dropped)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before
    data = json.loads(out.read_text())
    one, two = data["rows"]
    assert one["status"] == two["status"] == "ok" and "trainer=fsdp" in two["command"]
    assert "trainer.devices=2" in two["command"] and "trainer.devices=1" in one["command"]
    assert len(one["tokens_per_s_per_step"]) == len(two["tokens_per_s_per_step"]) == 3
    assert two["global_tok_s"] == pytest.approx(2 * two["rank_tok_s"]) and one["efficiency"] == pytest.approx(1.0)
    assert two["efficiency"] == pytest.approx(two["global_tok_s"] / (2 * one["global_tok_s"]))
    # each rank trained its own share: the 2-rank run's stage saw twice the samples
    rows = (tmp_path / "w" / "fsdp-2" / "data" / "trajectories.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 3 and all(len(json.loads(r)["input_ids"]) == 64 for r in rows)


# --- packing (issue #20): several samples per row, exact sample boundaries ---

# the 27B's shapes scaled down: head_dim 256 with 6 query heads per KV head, GDN key/value heads 128 wide with 3 value
# heads per key head, partial rotary 0.25 (mrope 11/11/10), conv kernel 4, one attention layer per 4
SMALL_27B = dict(bench.QWEN36_27B, vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=6, num_key_value_heads=1, linear_num_key_heads=2, linear_num_value_heads=6)


def _packed_samples(lengths, vocab, seed=0):
    from cardforge.train.data import Sample

    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        mask = (torch.rand(n, generator=g) < 0.7).long().tolist()  # some context tokens, as in trajectories
        out.append(Sample(ids, mask))
    return out


def _per_token_losses(backbone, batch):
    """Every target token's cross-entropy, in row order (what the packed/unpacked comparison needs)."""
    from cardforge.train import packing

    kwargs = packing.model_kwargs(batch) if packing.is_packed(batch) else {}
    hidden = backbone.get_decoder()(input_ids=batch["input_ids"], use_cache=False, **kwargs).last_hidden_state
    target = batch["loss_mask"][:, 1:].bool()
    logits = backbone.get_output_embeddings()(hidden[:, :-1][target])
    return F.cross_entropy(logits, batch["input_ids"][:, 1:][target], reduction="none")


def _lora_model(arch, seed=0):
    model = bench.build_model(bench.text_config(arch), "cpu", torch.float64, seed=seed)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = bench.add_lora(model, dropout=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in bench.lora_params(model).items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.02)
    return model


@pytest.mark.slow  # ~2 min each on a busy 2-core machine (float64, 7 samples one by one + the packed rows)
@pytest.mark.parametrize("arch", ["tiny", "small_27b"])
def test_packed_rows_equal_samples_run_one_by_one(arch):
    """Two packed rows (samples of 1 to 64 tokens, boundaries on and inside GDN chunks, padding tails) give, in
    float64, the same per-token losses and the same gradient for every LoRA tensor as each sample run alone through
    the unpacked path: attention, the Gated DeltaNet state and its conv1d all restart at every boundary."""
    from cardforge.train import packing
    from cardforge.train.data import collate
    from cardforge.train.module import masked_lm_loss

    cfg = bench.TINY if arch == "tiny" else SMALL_27B
    model = _lora_model(cfg)
    fast.enable(model)
    backbone = model.get_base_model()
    samples = _packed_samples([64, 37, 1, 15, 5, 63, 20], cfg["vocab_size"])
    rows = [packing.PackedRow(tuple(samples[:4])), packing.PackedRow(tuple(samples[4:]))]
    batch = packing.collate_packed(rows, pad_id=0, row_len=128)
    assert batch["input_ids"].shape == (2, 128) and int(batch["attn_meta"][0]) == 9  # 7 samples + 2 padding tails

    packed = _per_token_losses(backbone, batch)
    alone = torch.cat([_per_token_losses(backbone, collate([s], pad_id=0)) for s in samples])
    assert packed.shape == alone.shape and packed.numel() > 100
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)

    loss, n = masked_lm_loss(backbone, batch, chunked_ce=True)
    loss.backward()
    g_packed = {k: p.grad.clone() for k, p in bench.lora_params(model).items()}
    model.zero_grad(set_to_none=True)
    total = 0.0
    for s in samples:
        b = collate([s], pad_id=0)
        part, m = masked_lm_loss(backbone, b, chunked_ce=True)
        if m:
            (part * m / n).backward()
            total += float(part.detach()) * m / n
    assert n == packed.numel() and float(loss) == pytest.approx(total, rel=1e-12)
    for k, p in bench.lora_params(model).items():
        assert torch.count_nonzero(g_packed[k]) > 0, k
        torch.testing.assert_close(g_packed[k], p.grad, rtol=1e-9, atol=1e-12, msg=k)

    # the same row with its boundaries ignored (no resets: one long sequence) is NOT equal: the test can fail
    leaky = dict(batch, position_ids=torch.arange(128).expand(2, 128).contiguous())
    leaky["cu_seqlens"] = torch.tensor([0, 128, 256] + [256] * 254, dtype=torch.int32)
    leaky["attn_meta"] = torch.tensor([2, 128])
    assert not torch.allclose(_per_token_losses(backbone, leaky), alone, atol=1e-3)


def test_gdn_resets_match_token_recurrence_per_sample():
    """The GDN kernel's `reset`: boundaries at a chunk start, mid-chunk, two in one chunk and a 1-token sample give
    the token recurrence of each sample alone (outputs and all input gradients, float64), with and without the scan
    op."""
    inputs = _gdn_inputs(B=2, T=100)
    reset = torch.zeros(2, 100, dtype=torch.bool)
    reset[0, [0, 32, 40, 41, 70]] = True
    reset[1, [0, 5, 63, 64]] = True
    for scan_op in (False, True):
        out, grads = _run_gdn(lambda q, k, v, g, b: chunk_gated_delta_rule(q, k, v, g, b, chunk_size=32,
                                                                          scan_op=scan_op, reset=reset), inputs)
        pieces = [[], []]
        ref_grads = [torch.zeros_like(x) for x in inputs]
        q, k, v, a, b = inputs
        for row in range(2):
            starts = reset[row].nonzero().flatten().tolist() + [100]
            for s, e in zip(starts, starts[1:]):
                part = [x[row:row + 1, s:e].detach().clone().requires_grad_() for x in inputs]
                o = reference(part[0], part[1], part[2], -F.softplus(part[3]), part[4].sigmoid())
                w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)[row:row + 1, s:e]
                (o * w).sum().backward()
                pieces[row].append(o.detach())
                for r, p in zip(ref_grads, part):
                    r[row:row + 1, s:e] = p.grad
        torch.testing.assert_close(out, torch.cat([torch.cat(p, 1) for p in pieces]), rtol=1e-5, atol=1e-5)
        for name, g, r in zip("qkvab", grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=f"grad of {name}")


def test_packed_conv_equals_conv_per_sample():
    from cardforge.train.fast.patch import packed_conv

    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3, bias=True).double()
    x = torch.randn(1, 20, 6, dtype=torch.float64)
    pos = torch.cat([torch.arange(n) for n in (7, 1, 2, 10)])[None]
    out = packed_conv(conv, x, pos)
    want, at = [], 0
    for n in (7, 1, 2, 10):
        want.append(conv(x[:, at:at + n].transpose(1, 2))[..., :n].transpose(1, 2))
        at += n
    torch.testing.assert_close(out, torch.cat(want, 1))
    no_reset = conv(x.transpose(1, 2))[..., :20].transpose(1, 2)
    torch.testing.assert_close(packed_conv(conv, x, torch.arange(20)[None]), no_reset)
    torch.testing.assert_close(packed_conv(conv, x, None), no_reset)  # what a compiled layer runs when unpacked
    x2 = torch.randn(3, 20, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: packed_conv(conv, t, None), (x2,))
    torch.testing.assert_close(packed_conv(conv, x2, None), conv(x2.transpose(1, 2))[..., :20].transpose(1, 2))


def test_pack_lengths_first_fit_decreasing():
    from cardforge.train.packing import pack_lengths

    rows = pack_lengths([10, 60, 30, 45, 50, 5], 100)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum([10, 60, 30, 45, 50, 5][i] for i in r) <= 100 for r in rows) and len(rows) == 2
    with pytest.raises(ValueError, match="more than the packed row length 50: raise trainer.pack_length"):
        pack_lengths([10, 51], 50)


def test_packed_batch_without_cardforge_kernels_is_refused():
    from cardforge.train import packing
    from cardforge.train.module import masked_lm_loss

    model = bench.build_model(bench.text_config(SMALL), "cpu", torch.float32)
    batch = packing.collate_packed([packing.PackedRow(tuple(_packed_samples([5, 6], 1000)))], 0, 16)
    with pytest.raises(RuntimeError, match="trainer.kernels=cardforge"):
        masked_lm_loss(model, batch)


@pytest.mark.slow
def test_compiled_layers_compile_packed_rows_once():
    """Packed rows of one length are one shape: two different packings (different sample counts and boundaries)
    through compiled layers with the scan op reuse the same 2 graphs (one per layer kind) and give the eager
    kernels' loss and LoRA gradients."""
    import torch._dynamo.utils as dynamo_utils

    from cardforge.train import packing
    from cardforge.train.module import masked_lm_loss

    model = _small_lora_model()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    backbone = model.get_base_model()
    packings = [[30, 64, 1, 20], [100, 7]]
    results = {}
    for spec in ("cardforge+scanop", "cardforge+layers+scanop"):
        v = bench.parse_variant(spec)
        bench.configure(model, v)
        dynamo_utils.counters.clear()
        for i, lengths in enumerate(packings):
            batch = packing.collate_packed([packing.PackedRow(tuple(_packed_samples(lengths, SMALL["vocab_size"],
                                                                                     seed=i)))], 0, 128)
            loss, _ = masked_lm_loss(backbone, batch, chunked_ce=True)
            loss.backward()
            results[spec, i] = (loss.detach(), {n: p.grad.clone() for n, p in bench.lora_params(model).items()})
            model.zero_grad(set_to_none=True)
        if v.layers:
            assert dynamo_utils.counters["stats"]["unique_graphs"] == 2, dict(dynamo_utils.counters["stats"])
    fast.disable(model)
    for i in range(len(packings)):
        (l0, g0), (l1, g1) = results["cardforge+scanop", i], results["cardforge+layers+scanop", i]
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
        for n in g0:
            torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=f"packing {i}: {n}")


def test_offloaded_checkpoints_equal_checkpointing():
    """`fast.offload`: layer inputs kept on the host, the layer rerun in the backward with the forward's RNG state:
    the loss and every LoRA gradient equal transformers' gradient checkpointing exactly, LoRA dropout on."""
    from cardforge.train.fast import offload

    model = _small_lora_model()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.2
    batch = bench.make_batch(SMALL["vocab_size"], 70, "cpu")
    v = bench.Variant("x", "cardforge", "chunked", autocast=False)
    fast.enable(model)
    out = []
    for off in (False, True):
        if off:
            assert offload.enable(model) == 4 and offload.enabled(model)
        torch.manual_seed(3)
        loss = bench.loss_fn(model, batch, v)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in bench.lora_params(model).items()}))
        model.zero_grad(set_to_none=True)
    offload.disable(model)
    assert not offload.enabled(model)
    (l0, g0), (l1, g1) = out
    assert torch.equal(l0, l1)
    for n in g0:
        assert torch.count_nonzero(g0[n]) > 0, n
        torch.testing.assert_close(g1[n], g0[n], rtol=0, atol=0, msg=n)


def test_offloaded_layers_are_tracked_for_prefetch_and_never_leak():
    """`fast.offload` keeps the offloaded layers of the forward in flight (the backward prefetches the input of the
    layer it reaches next): a forward queues every layer in order, its backward empties the queue, a forward that
    failed half-way is dropped by the next one, and a forward without grad queues nothing."""
    from cardforge.train.fast import offload

    model = _small_lora_model()
    batch = bench.make_batch(SMALL["vocab_size"], 40, "cpu")
    v = bench.Variant("x", "cardforge", "chunked", autocast=False)
    fast.enable(model)
    offload.enable(model)
    try:
        with torch.no_grad():
            bench.loss_fn(model, batch, v)
        assert offload._PENDING == []
        layers = offload._layers(model)
        real = type(layers[2]).forward
        calls = [0]

        def failing(self, *a, **k):  # the third layer fails once (e.g. out of memory) in the first forward
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("injected")
            return real(self, *a, **k)

        layers[2]._cf_offload_fn = failing
        with pytest.raises(RuntimeError, match="injected"):
            bench.loss_fn(model, batch, v)
        assert len(offload._PENDING) == 2  # the two layers before it, left by the failed forward
        loss = bench.loss_fn(model, batch, v)
        assert len(offload._PENDING) == 4 and all(c.host is not None for c in offload._PENDING)  # this forward's
        loss.backward()
        assert offload._PENDING == []
    finally:
        offload.disable(model)
        fast.disable(model)


def test_core_recomputed_in_head_groups_equals_the_core():
    """`fast.enable(core_groups=G)` (bench `+corerc`): the GDN core under checkpointing in head groups gives the
    same loss and LoRA gradients as the core run whole (packed row, fp64), and the layer saves less for its
    backward (the core's chunk tensors are recomputed)."""
    from cardforge.train import packing
    from cardforge.train.data import Sample

    model = bench.build_model(bench.text_config(SMALL), "cpu", torch.float64, seed=0)
    model = bench.add_lora(model, dropout=0.0)
    with torch.no_grad():
        for n, p in bench.lora_params(model).items():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(2)
    samples = [Sample(torch.randint(0, SMALL["vocab_size"], (n,), generator=g).tolist(), [1] * n) for n in (90, 7, 60)]
    batch = packing.collate_packed([packing.PackedRow(tuple(samples))], pad_id=0, row_len=192)
    v = bench.Variant("x", "cardforge", "chunked", autocast=False)
    out = []
    for groups in (0, 2):
        fast.enable(model, core_groups=groups)
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = bench.loss_fn(model, batch, v)
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in bench.lora_params(model).items()}, saved[0]))
        model.zero_grad(set_to_none=True)
    fast.disable(model)
    (l0, g0, s0), (l1, g1, s1) = out
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-12)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-9, atol=1e-12, msg=n)
    assert s1 < 0.7 * s0, (s1, s0)


def test_bench_mix_lengths_from_a_data_stage_output(tmp_path, tiny_model_dir, capsys):
    """`--lengths-from`: the mix's lengths come from a data stage's trajectories (rendered by the model's template as
    the train stage renders them), pre-tokenized rows, or a list; a file of trajectories without --tokenizer, or
    one that is none of these, is one clear error before the model is built."""
    import json

    from cardforge.core.chat import Message, Trajectory
    from cardforge.train.data import load_samples
    from transformers import AutoTokenizer

    trajs = tmp_path / "trajectories.jsonl"
    trajs.write_text("".join(json.dumps(Trajectory(f"t{i}", [Message("user", "question " * (3 + 7 * i)),
                                                              Message("assistant", "answer " * (5 + 11 * i), "why")]
                                                   ).to_dict()) + "\n" for i in range(5)))
    want = sorted(len(s.input_ids) for s in load_samples(trajs, AutoTokenizer.from_pretrained(tiny_model_dir)))
    got, source = bench.lengths_from(trajs, 0, tokenizer=str(tiny_model_dir))
    assert sorted(got) == want and len(set(want)) == 5 and "5 samples the train stage reads" in source
    drawn, _ = bench.lengths_from(trajs, 9, max_len=want[-2], tokenizer=str(tiny_model_dir))
    assert len(drawn) == 9 and drawn[0] == want[-2] and set(drawn) <= {*want[:-1]}  # cut at max_len, longest first

    listed = tmp_path / "lengths.txt"
    listed.write_text("3000\n70000\n1200\n")
    assert bench.lengths_from(listed, 0)[0] == [3000, 32768, 1200]
    listed.write_text("5000\n")  # one length: also a JSON document (an int)
    assert bench.lengths_from(listed, 0)[0] == [5000]
    listed.write_text("[4000, 9000]")
    assert bench.lengths_from(listed, 0)[0] == [4000, 9000]
    for bad, why in ((trajs, "--tokenizer"), (tmp_path / "junk.txt", "neither a JSON list")):
        if bad.name == "junk.txt":
            bad.write_text("hello\n")
        with pytest.raises(SystemExit):
            bench.main(["--arch", "tiny", "--layers", "2", "--seq", "--mix", "3", "--lengths-from", str(bad)])
        assert why in capsys.readouterr().err

    out = tmp_path / "mix.json"
    assert bench.main(["--arch", "tiny", "--layers", "4", "--seq", "--lengths-from", str(trajs), "--tokenizer",
                       str(tiny_model_dir), "--row", "256", "--mix-max", "256", "--plain-samples", "2",
                       "--variants", "cardforge", "plain", "--out", str(out)]) == 0
    mix = json.loads(out.read_text())["mix"]
    assert sorted(mix["lengths"]) == want and str(trajs) in mix["distribution"]
    assert "real tokens" in mix["summary"]
    rows = {r["variant"]: r for r in mix["results"]}
    assert rows["cardforge"]["status"] == rows["plain"]["status"] == "ok"


_PACK_MODEL: dict = {}


def _small_packed_model():
    if "m" not in _PACK_MODEL:  # built once: hypothesis reruns the body (float64, 27B-shaped, 4 layers)
        model = _lora_model(SMALL_27B, seed=3)
        fast.enable(model)
        _PACK_MODEL["m"] = model.get_base_model()
    return _PACK_MODEL["m"]


def _row_lengths():
    from hypothesis import strategies as st

    # sample lengths around the GDN chunk (64) and conv (4) edges; the row may be exactly full (no padding tail)
    return st.lists(st.one_of(st.integers(1, 5), st.integers(60, 68), st.integers(1, 140)), min_size=1, max_size=5)


@pytest.mark.slow  # ~10 s per example on 2 busy cores
def test_any_packing_gives_each_samples_own_losses():
    """Property (hypothesis): whatever the sample lengths (1 token, around a GDN chunk's 64, several chunks) and
    however much padding the row has (none to plenty), a packed row's per-token losses equal its samples' losses
    run one by one, float64, on a 27B-shaped config (attention, GDN state and conv1d all reset per sample)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from cardforge.train import packing
    from cardforge.train.data import collate

    backbone = _small_packed_model()

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(lengths=_row_lengths(), pad=st.sampled_from([0, 1, 63, 64, 100]), seed=st.integers(0, 2**16))
    def check(lengths, pad, seed):
        samples = _packed_samples(lengths, SMALL_27B["vocab_size"], seed=seed)
        samples = [s for s in samples if sum(s.loss_mask[1:]) > 0]  # what load_samples keeps
        if not samples:
            return
        row = sum(len(s.input_ids) for s in samples) + pad
        batch = packing.collate_packed([packing.PackedRow(tuple(samples))], pad_id=0, row_len=row)
        with torch.no_grad():
            packed = _per_token_losses(backbone, batch)
            alone = torch.cat([_per_token_losses(backbone, collate([s], pad_id=0)) for s in samples])
        assert packed.shape == alone.shape
        torch.testing.assert_close(packed, alone, rtol=1e-10, atol=1e-10)

    check()
