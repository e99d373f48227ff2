"""LoRA training-step benchmark on the Qwen3.6-27B text architecture: plain transformers + PEFT vs cardforge.

    python -m cardforge.train.bench                      # 27B architecture, random bf16 weights, seq 4096 and 8192
    python -m cardforge.train.bench --seq 4096 --variants plain cardforge+layers+tf32 "cardforge+layers+tf32@0.1"
    python -m cardforge.train.bench --arch tiny --seq 256 --steps 2   # anywhere (CPU too): the code path only
    python -m cardforge.train.bench --seq --mix 10 --row 32768 --variants "cardforge+layers+tf32+scanop+offload" plain
                                                         # the card's length mix: packed rows vs plain batch 1
    python -m cardforge.train.bench --seq --mix 12 --lengths-from outputs/data/trajectories.jsonl --tokenizer MODEL \\
        --variants "cardforge+layers+tf32+scanop+offload+corerc@0.3" plain   # lengths drawn from a data-stage output

Both variants run in one process on the SAME model and LoRA weights (restored before each variant), the same
batch and the same optimizer (bitsandbytes paged AdamW 8-bit on CUDA), so their first losses must agree:
- `plain`: what a user writes: bf16 model, `get_peft_model`, `gradient_checkpointing_enable()`,
  `model(input_ids, labels=input_ids).loss` (full-sequence logits), transformers' Gated DeltaNet path.
- `cardforge`: the train stage's step: bf16 autocast (Lightning bf16-mixed), cardforge's GDN kernel and chunked
  linear cross-entropy (`cardforge.train.fast`); options (`+layers`: decoder layers compiled, `+tf32`, `:K`,
  `@B`: see --help) select what `trainer.compile_layers`, `trainer.tf32`, `trainer.no_recompute_layers` and
  `trainer.activation_memory_budget` select in the stage. Default: plain vs `cardforge+layers+tf32@0.1`.
Reported per variant and sequence length: step time (median), tokens/s, MFU (model FLOPs 4N + attention,
no recompute, against the dense bf16 peak), peak memory (allocated and reserved), first loss. Results go to
stdout as a table and to --out as JSON; `--profile` prints the top kernels of one step per variant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch._functorch.config  # not loaded by `import torch`; the @B budget knob lives there

from cardforge.core.errors import UserError

QWEN36_27B = dict(vocab_size=248320, hidden_size=5120, intermediate_size=17408, num_hidden_layers=64,
                  full_attention_interval=4, num_attention_heads=24, num_key_value_heads=4, head_dim=256,
                  linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128,
                  linear_value_head_dim=128, linear_conv_kernel_dim=4, partial_rotary_factor=0.25,
                  mrope_section=[11, 11, 10], rope_theta=10_000_000.0)
TINY = dict(vocab_size=248320, hidden_size=256, intermediate_size=512, num_hidden_layers=4, full_attention_interval=4,
            num_attention_heads=2, num_key_value_heads=1, head_dim=128, linear_num_key_heads=2,
            linear_num_value_heads=4, linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
            partial_rotary_factor=0.25, mrope_section=[6, 5, 5], rope_theta=10_000_000.0)
ARCHS = {"qwen36_27b": QWEN36_27B, "tiny": TINY}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"]  # conf/lora/qwen35.yaml
H200_BF16_PEAK = 989e12  # dense bf16 tensor-core FLOP/s (vendor datasheet, SXM)


def text_config(arch: dict, layers: int | None = None):
    from transformers import Qwen3_5TextConfig

    a = dict(arch)
    if layers:
        a["num_hidden_layers"] = layers
    return Qwen3_5TextConfig(
        vocab_size=a["vocab_size"], hidden_size=a["hidden_size"], intermediate_size=a["intermediate_size"],
        num_hidden_layers=a["num_hidden_layers"], full_attention_interval=a["full_attention_interval"],
        num_attention_heads=a["num_attention_heads"], num_key_value_heads=a["num_key_value_heads"],
        head_dim=a["head_dim"], linear_num_key_heads=a["linear_num_key_heads"],
        linear_num_value_heads=a["linear_num_value_heads"], linear_key_head_dim=a["linear_key_head_dim"],
        linear_value_head_dim=a["linear_value_head_dim"], linear_conv_kernel_dim=a["linear_conv_kernel_dim"],
        tie_word_embeddings=False, use_cache=False,
        rope_parameters={"rope_type": "default", "rope_theta": a["rope_theta"],
                         "partial_rotary_factor": a["partial_rotary_factor"], "mrope_section": a["mrope_section"],
                         "mrope_interleaved": True})


def build_model(config, device: str, dtype: torch.dtype, seed: int = 0):
    """Random weights with transformers' own init, created directly on `device` (seconds for 27B on a GPU)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.use_cache = False
    return model.train()


def add_lora(model, r: int = 64, alpha: int = 128, dropout: float = 0.05):
    """The card's LoRA, through cardforge's target resolver (every target must match)."""
    from omegaconf import OmegaConf

    from cardforge.train.lora import apply_lora

    cfg = OmegaConf.create({"_target_": "peft.LoraConfig", "r": r, "lora_alpha": alpha, "lora_dropout": dropout,
                            "target_modules": LORA_TARGETS, "bias": "none", "task_type": "CAUSAL_LM"})
    peft_model, _ = apply_lora(model, cfg)
    return peft_model


@dataclass
class Variant:
    name: str
    kernels: str  # transformers | cardforge
    loss: str  # hf (model(labels=)) | chunked (cardforge masked loss)
    autocast: bool
    no_recompute_layers: int = 0  # the last N decoder layers keep their activations
    compile: bool = False  # the GDN core through torch.compile
    layers: bool = False  # every decoder layer through torch.compile (regional compilation)
    tf32: bool = False  # fp32 matmuls on TF32 tensor cores (under autocast: the few it keeps in fp32)
    memory_budget: float | None = None  # no checkpointing: compile's partitioner keeps this fraction of activations
    scan_op: bool = False  # the GDN state scan as a custom op (compiled graphs stay the same size at any length)
    offload: bool = False  # checkpointed layer inputs in pinned host memory (fast.offload; long packed rows)
    core_groups: int = 0  # the GDN core recomputed in the backward in this many head groups (long rows)
    flat_optimizer: bool = False  # the optimizer steps flat buffers (optim.FlatOptimizer; cardforge's default)
    cpp_wrapper: bool = False  # Inductor's C++ wrapper for the compiled layers (less Python per kernel launch)
    cudagraphs: bool = False  # compiled layers replayed as CUDA graphs (torch.compile mode="reduce-overhead")


VARIANTS = {
    "plain": Variant("plain", "transformers", "hf", autocast=False),
    "cardforge": Variant("cardforge", "cardforge", "chunked", autocast=True, flat_optimizer=True),
    "cardforge-ce-only": Variant("cardforge-ce-only", "transformers", "chunked", autocast=True, flat_optimizer=True),
}
OPTIONS = ("compile", "layers", "tf32", "scanop", "offload", "corerc", "pertensor", "cppwrap", "cudagraphs")
CORE_GROUPS = 4  # +corerc: head groups of the recomputed GDN core (16 key heads on the 27B: 4 + 12 value heads each)
ALIASES = {"cardforge-compile": "cardforge+compile"}
SPEC_HELP = ("BASE[+OPTION...][:K][@B] with BASE from " + ", ".join(VARIANTS) + "; OPTION from " + ", ".join(OPTIONS)
             + " (compile: the GDN core through torch.compile; layers: every decoder layer compiled; tf32: fp32 "
               "matmuls on TF32; scanop: the GDN state scan as a custom op; offload: checkpointed layer inputs in "
               "pinned host memory; corerc: the GDN core recomputed in the backward, 4 head groups one at a time; "
               "pertensor: bitsandbytes steps one LoRA tensor at a time, as `plain` does (cardforge's default, like "
               "the stage's trainer.flat_optimizer, steps flat buffers); cppwrap: Inductor's C++ wrapper for the "
               "compiled layers; cudagraphs: compiled layers replayed as CUDA graphs, torch.compile's "
               "reduce-overhead mode); "
               ":K = the last K layers not recomputed; @B = no gradient checkpointing, compile's partitioner keeps "
               "the fraction B of each layer's activations (needs +layers); with +offload, @B keeps the offloaded checkpoints and B applies "
               "to each layer's recompute in the backward (its saved activations: the peak at long rows); "
               "cardforge-compile = cardforge+compile")


def parse_variant(spec: str) -> Variant:
    """`cardforge+layers+tf32:8` -> the cardforge step, layers compiled, TF32, last 8 layers not recomputed."""
    body, _, budget = ALIASES.get(spec, spec).partition("@")
    body, _, k = body.partition(":")
    name, *opts = body.split("+")
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r} in {spec!r}: {SPEC_HELP}")
    bad = [o for o in opts if o not in OPTIONS]
    if bad:
        raise ValueError(f"unknown option {bad[0]!r} in {spec!r}: {SPEC_HELP}")
    base = VARIANTS[name]
    if opts and base.kernels != "cardforge":
        raise ValueError(f"{spec!r}: options apply to cardforge's step only")
    if budget and "layers" not in opts:
        raise ValueError(f"{spec!r}: @B (memory budget) needs +layers")
    if budget and "offload" in opts and "layers" not in opts:
        raise ValueError(f"{spec!r}: +offload@B needs +layers (B applies to the compiled recompute)")
    if budget and not hasattr(torch._functorch.config, "activation_memory_budget"):
        raise ValueError(f"{spec!r}: @B needs torch._functorch.config.activation_memory_budget, which the installed "
                         f"torch {torch.__version__} lacks; drop @B or install a torch that has it")
    return Variant(spec, base.kernels, base.loss, base.autocast, int(k) if k else 0, compile="compile" in opts,
                   layers="layers" in opts, tf32="tf32" in opts, memory_budget=float(budget) if budget else None,
                   scan_op="scanop" in opts, offload="offload" in opts,
                   core_groups=CORE_GROUPS if "corerc" in opts else 0,
                   flat_optimizer=base.flat_optimizer and "pertensor" not in opts, cpp_wrapper="cppwrap" in opts,
                   cudagraphs="cudagraphs" in opts)


def set_recompute(model, no_recompute_layers: int) -> None:
    layers = model.get_base_model().model.layers
    for i, layer in enumerate(layers):
        if hasattr(layer, "gradient_checkpointing"):
            layer.gradient_checkpointing = i < len(layers) - no_recompute_layers


def configure(model, v: Variant) -> None:
    from cardforge.train import fast
    from cardforge.train.fast import offload, patch

    if v.compile or v.layers:  # a fresh compile per variant: the memory budget is read when compiling
        torch._dynamo.reset()
    import torch._inductor.config as inductor_config

    inductor_config.cpp_wrapper = v.cpp_wrapper
    if v.memory_budget is not None or hasattr(torch._functorch.config, "activation_memory_budget"):
        torch._functorch.config.activation_memory_budget = 1.0 if v.memory_budget is None else v.memory_budget
    torch.backends.cuda.matmul.allow_tf32 = v.tf32
    offload.disable(model)
    patch.uncompile_layers(model)  # compiled again below with this variant's mode (CUDA graphs or not)
    if v.kernels == "cardforge":
        fast.enable(model, compile=v.compile, layers=v.layers and not v.offload, scan_op=v.scan_op,
                    core_groups=v.core_groups, cudagraphs=v.cudagraphs)
    else:
        fast.disable(model)
    n = len(model.get_base_model().model.layers)
    set_recompute(model, n if v.memory_budget is not None else v.no_recompute_layers)
    if v.offload:  # after set_recompute: offloaded layers do their own checkpointing
        offload.enable(model, compile=v.layers)


def loss_fn(model, batch: dict[str, torch.Tensor], v: Variant) -> torch.Tensor:
    from cardforge.train.module import masked_lm_loss

    device_type = batch["input_ids"].device.type
    if v.cudagraphs:  # a new step: the CUDA graphs' outputs of the last one may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=v.autocast):
        if v.loss == "hf":
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["input_ids"], use_cache=False).loss
        loss, _ = masked_lm_loss(model.get_base_model(), batch, chunked_ce=True)
        return loss


def make_batch(vocab: int, seq: int, device: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "loss_mask": torch.ones_like(ids).to(device)}


def build_optimizer(params, on_cuda: bool, flat: bool = False):
    from cardforge.train.optim import build_optimizer as build

    opt, _ = build(params, "paged_adamw_8bit", 1e-5, 0.0, on_cuda=on_cuda, flat=flat)
    return opt


def lora_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def model_flops_per_token(config, seq: int) -> float:
    """Forward + backward (activation gradients; the base is frozen) of every matmul with weights, plus attention.
    2 FLOPs per weight per token forward, 2 backward; causal attention 2*T*heads*head_dim per token per layer
    forward (QK^T and PV over T/2 keys on average), twice that backward. LoRA adds < 2%: not counted."""
    c = config
    h, f, hd = c.hidden_size, c.intermediate_size, c.head_dim
    attn_w = h * (2 * c.num_attention_heads * hd) + 2 * h * c.num_key_value_heads * hd + c.num_attention_heads * hd * h
    kd, vd = c.linear_num_key_heads * c.linear_key_head_dim, c.linear_num_value_heads * c.linear_value_head_dim
    gdn_w = h * (2 * kd + vd) + h * vd + 2 * h * c.linear_num_value_heads + vd * h
    n_full = sum(1 for t in c.layer_types if t == "full_attention")
    n_lin = c.num_hidden_layers - n_full
    weights = n_full * attn_w + n_lin * gdn_w + c.num_hidden_layers * 3 * h * f + c.vocab_size * h
    attn = n_full * 2 * seq * c.num_attention_heads * hd
    return 4 * weights + 3 * attn


@dataclass
class Result:
    variant: str
    seq: int
    status: str = "ok"
    step_s: list[float] = field(default_factory=list)
    first_loss: float = float("nan")
    first_step_s: float = float("nan")  # the first warm-up step: includes compilation
    peak_alloc_gib: float = float("nan")
    peak_reserved_gib: float = float("nan")
    tok_s: float = float("nan")
    mfu: float = float("nan")
    graphs: int = 0  # graphs dynamo compiled for this variant (2 = one per layer kind)
    error: str = ""


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a variant's count is the difference: 2 per compiled
    function is one per layer kind; more means recompiles, e.g. one per layer or per length)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_variant(model, v: Variant, seq: int, steps: int, warmup: int, snapshot: dict, device: str,
                flops_tok: float, profile: bool = False) -> Result:
    res = Result(v.name, seq)
    on_cuda = device.startswith("cuda")
    with torch.no_grad():  # same LoRA weights for every variant: first losses are comparable
        for n, p in lora_params(model).items():
            p.copy_(snapshot[n])
    configure(model, v)
    graphs0 = compiled_graphs()
    batch = make_batch(model.config.vocab_size, seq, device)
    opt = None
    try:
        opt = build_optimizer(list(lora_params(model).values()), on_cuda, v.flat_optimizer)
        if on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for i in range(warmup + steps):
            if profile and i == warmup:
                _profile_step(model, batch, v, opt)
            torch.manual_seed(1234 + i)  # same dropout masks for every variant
            if on_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = loss_fn(model, batch, v)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if on_cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            value = float(loss.detach())
            if i == 0:
                res.first_loss, res.first_step_s = value, dt
            if i >= warmup:
                res.step_s.append(dt)
            print(f"  {v.name} seq {seq} step {i}: {dt:.3f} s loss {value:.4f}", file=sys.stderr, flush=True)
        step = statistics.median(res.step_s)
        res.tok_s = seq / step
        res.mfu = flops_tok * res.tok_s / H200_BF16_PEAK
        if on_cuda:
            res.peak_alloc_gib = torch.cuda.max_memory_allocated() / 2**30
            res.peak_reserved_gib = torch.cuda.max_memory_reserved() / 2**30
    except torch.cuda.OutOfMemoryError as exc:
        res.status, res.error = "oom", str(exc).splitlines()[0][:200]
        if on_cuda:
            res.peak_alloc_gib = torch.cuda.max_memory_allocated() / 2**30
    except Exception as exc:  # a variant that fails (e.g. to compile) is reported; the next one still runs
        import traceback

        traceback.print_exc()
        res.status, res.error = "error", f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        res.graphs = compiled_graphs() - graphs0
        del opt
        model.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.empty_cache()
    return res


# --- a realistic length mix (issue #20) ---

MIX_MEDIAN, MIX_SIGMA, MIX_MIN, MIX_MAX = 4096, 0.9, 1024, 32768


def card_lengths(n: int, seed: int = 0, max_len: int = MIX_MAX) -> list[int]:
    """`n` sample lengths like the card's ReAct trajectories: log-normal with median 4096 tokens and sigma 0.9 (a long
    tail: ~6% above 16k), clipped to [1024, max_len]; the first one is max_len itself, so every run meets the longest
    sample the card's data allows (data.max_seq_len 32k)."""
    import random

    rng = random.Random(seed)
    out = [max_len] + [int(min(max_len, max(MIX_MIN, round(rng.lognormvariate(math.log(MIX_MEDIAN), MIX_SIGMA)))))
                       for _ in range(n - 1)]
    return out[:n]


def lengths_from(path: Path, n: int, max_len: int = MIX_MAX, tokenizer: str | None = None,
                 seed: int = 0) -> tuple[list[int], str]:
    """(sample lengths for the mix, where they came from) read from `path`: a JSON list of integers, one integer per
    line, or a JSONL file the train stage reads (pre-tokenized rows, or the data stage's trajectories.jsonl:
    rendered by `tokenizer`'s chat template as the stage does, every trained turn a sequence). Lengths are cut at
    `max_len` (the stage truncates at data.max_seq_len). `n` = 0: every length, in the file's order; else `n`
    drawn with replacement (seeded), the file's longest first, so the run meets the longest sample the data has."""
    import random

    text = path.read_text()
    lengths: list[int] | None = None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and all(ln.isdigit() for ln in lines):  # before JSON: a one-line file of a length is a JSON int
        lengths, what = [int(ln) for ln in lines], "lengths (one per line)"
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list) and data and all(isinstance(x, int) and not isinstance(x, bool) for x in data):
            lengths, what = data, "lengths (a JSON list)"
    if lengths is None:
        from cardforge.train.data import load_samples

        first = lines[0] if lines else ""
        try:
            head = json.loads(first)
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict):
            raise ValueError(f"--lengths-from {path}: neither a JSON list of lengths, one length per line, nor a JSONL "
                             f"file of samples or trajectories (first line: {first[:60]!r})")
        if "input_ids" not in head and tokenizer is None:
            raise ValueError(f"--lengths-from {path}: holds trajectories; name the model whose chat template renders "
                             "them with --tokenizer (a model dir or HF id)")
        tok = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer)
        samples = load_samples(path, tok, max_len=max_len)
        lengths, what = [len(x.input_ids) for x in samples], "samples the train stage reads" + (
            f" (rendered by {tokenizer}'s chat template)" if tokenizer else "")
    bad = [x for x in lengths if x < 2]
    if bad:
        raise ValueError(f"--lengths-from {path}: lengths must be >= 2 tokens (a sample's first token is never a "
                         f"target); got {bad[:3]}")
    lengths = [min(int(x), max_len) for x in lengths]
    source = f"{path}: {len(lengths)} {what}, cut at {max_len}"
    if n <= 0:
        return lengths, source
    rng = random.Random(seed)
    return [max(lengths)] + [rng.choice(lengths) for _ in range(n - 1)], source + f"; {n} drawn (seed {seed})"


def length_summary(lengths: list[int], row: int) -> str:
    """Quantiles of the lengths and what packing them into rows of `row` tokens gives (rows, real-token share)."""
    from cardforge.train import packing

    q = statistics.quantiles(lengths, n=10, method="inclusive") if len(lengths) > 1 else [lengths[0]] * 9
    rows = packing.pack_lengths(lengths, row) if max(lengths) <= row else None
    packed = (f"; packed into {len(rows)} rows of {row}: {sum(lengths) / (len(rows) * row):.0%} real tokens"
              if rows is not None else f"; the longest ({max(lengths)}) is above --row {row}")
    return (f"{len(lengths)} samples, {sum(lengths)} tokens; median {statistics.median(lengths):.0f}, p10 {q[0]:.0f}, "
            f"p90 {q[8]:.0f}, max {max(lengths)}; {sum(x > 16384 for x in lengths) / len(lengths):.0%} above 16k"
            + packed)


def mix_samples(lengths: list[int], vocab: int, seed: int = 1) -> list:
    from cardforge.train.data import Sample

    g = torch.Generator().manual_seed(seed)
    return [Sample(torch.randint(0, vocab, (n,), generator=g).tolist(), [1] * n) for n in lengths]


@dataclass
class MixResult:
    variant: str
    row_len: int  # packed row length (0: batch 1, one sample per step, no padding)
    status: str = "ok"
    samples: int = 0
    tokens: int = 0  # real (non-padding) tokens in the timed steps
    padded_tokens: int = 0  # row tokens incl. padding
    steps: int = 0
    seconds: float = 0.0  # timed steps, after the warm-up step
    first_step_s: float = float("nan")  # the warm-up step: includes compilation
    median_step_s: float = float("nan")
    eff_tok_s: float = float("nan")
    peak_alloc_gib: float = float("nan")
    peak_reserved_gib: float = float("nan")
    oom_lengths: list[int] = field(default_factory=list)
    first_loss: float = float("nan")
    graphs: int = 0  # graphs dynamo compiled for this variant (one shape: 2 per compiled function and layer kind)
    error: str = ""


def run_mix(model, v: Variant, samples: list, row_len: int, snapshot: dict, device: str) -> MixResult:
    """One optimizer step per packed row (cardforge) or per sample (`plain`: batch 1, no packing, as a user runs
    transformers + PEFT). The first step is a warm-up (compiles); the rest are timed; effective tokens/s = sample
    tokens / time. A plain sample that runs out of memory is recorded and skipped."""
    from cardforge.train import packing
    from cardforge.train.data import collate

    on_cuda = device.startswith("cuda")
    res = MixResult(v.name, row_len if v.kernels == "cardforge" else 0)
    with torch.no_grad():
        for n, p in lora_params(model).items():
            p.copy_(snapshot[n])
    configure(model, v)
    if res.row_len:
        rows = packing.pack_rows(samples, row_len)
        batches = [(packing.collate_packed([r], pad_id=0, row_len=row_len), r.tokens) for r in rows]
    else:
        batches = [(collate([s], pad_id=0), len(s.input_ids)) for s in samples]
    opt = build_optimizer(list(lora_params(model).values()), on_cuda, v.flat_optimizer)
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    graphs0 = compiled_graphs()
    times = []
    oom: set[int] = set()  # a plain sample that ran out of memory is not tried again
    try:
        order = [0] + list(range(len(batches)))  # the warm-up step, then every batch timed
        for i, j in enumerate(order):
            if j in oom:
                continue
            batch = {k: (t if k == "attn_meta" else t.to(device)) for k, t in batches[j][0].items()}
            torch.manual_seed(1234 + i)
            if on_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                loss = loss_fn(model, batch, v)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if on_cuda:
                    torch.cuda.synchronize()
            except torch.cuda.OutOfMemoryError:
                if res.row_len:
                    raise
                opt.zero_grad(set_to_none=True)
                loss = None
                torch.cuda.empty_cache()
                res.oom_lengths.append(batches[j][1])
                oom.add(j)
                print(f"  {v.name} mix sample {j} ({batches[j][1]} tokens): out of memory", file=sys.stderr,
                      flush=True)
                continue
            dt = time.perf_counter() - t0
            value = float(loss.detach())
            if i == 0:
                res.first_step_s, res.first_loss = dt, value
            else:
                times.append(dt)
                res.tokens += batches[j][1]
                res.padded_tokens += int(batches[j][0]["input_ids"].numel())
                res.samples += len(rows[j].samples) if res.row_len else 1
            peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else float("nan")
            print(f"  {v.name} mix step {i} ({batches[j][1]} tokens): {dt:.3f} s loss {value:.4f} "
                  f"peak {peak:.1f} GiB", file=sys.stderr, flush=True)
        res.steps, res.seconds = len(times), sum(times)
        if times:
            res.median_step_s = statistics.median(times)
            res.eff_tok_s = res.tokens / res.seconds
    except torch.cuda.OutOfMemoryError as exc:
        res.status, res.error = "oom", str(exc).splitlines()[0][:200]
    except Exception as exc:  # a variant that fails (e.g. to compile) is reported; the next one still runs
        import traceback

        traceback.print_exc()
        res.status, res.error = "error", f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        res.graphs = compiled_graphs() - graphs0
        if on_cuda:
            res.peak_alloc_gib = torch.cuda.max_memory_allocated() / 2**30
            res.peak_reserved_gib = torch.cuda.max_memory_reserved() / 2**30
        del opt
        model.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.empty_cache()
    return res


def mix_table(results: list[MixResult]) -> str:
    rows = ["| variant | row | samples | tokens (real / padded) | steps | timed s | effective tok/s | warm-up step s "
            "(compile) | graphs | peak alloc GiB | peak reserved GiB | first loss | OOM samples | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.variant} | {r.row_len or 'batch 1, unpacked'} | {r.samples} | {r.tokens} / "
                    f"{r.padded_tokens} | {r.steps} | {r.seconds:.1f} | {r.eff_tok_s:.0f} | {r.first_step_s:.1f} | "
                    f"{r.graphs} | "
                    f"{r.peak_alloc_gib:.1f} | {r.peak_reserved_gib:.1f} | {r.first_loss:.4f} | "
                    f"{','.join(map(str, r.oom_lengths)) or '-'} | {r.status} |")
    base = next((r for r in results if r.row_len == 0 and r.steps), None)
    for r in results:
        if base and r is not base and r.steps:
            rows.append(f"\nmix: {r.variant} / plain = {r.eff_tok_s / base.eff_tok_s:.2f}x effective tok/s")
    return "\n".join(rows)


def _profile_step(model, batch, v: Variant, opt) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        loss = loss_fn(model, batch, v)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
    print(f"== profile {v.name}", file=sys.stderr)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60),
          file=sys.stderr, flush=True)


def table(results: list[Result]) -> str:
    rows = ["| variant | seq | step s (median) | tok/s | MFU | warm-up step s (compile) | graphs | peak alloc GiB | "
            "peak reserved GiB | first loss | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        step = statistics.median(r.step_s) if r.step_s else float("nan")
        rows.append(f"| {r.variant} | {r.seq} | {step:.3f} | {r.tok_s:.0f} | {r.mfu:.1%} | {r.first_step_s:.1f} | "
                    f"{r.graphs} | {r.peak_alloc_gib:.1f} | "
                    f"{r.peak_reserved_gib:.1f} | {r.first_loss:.4f} | {r.status} |")
    by = {(r.variant, r.seq): r for r in results}
    for seq in sorted({r.seq for r in results}):
        base = by.get(("plain", seq))
        for r in results:
            if r.seq == seq and r.variant != "plain" and base and base.status == r.status == "ok":
                rows.append(f"\nseq {seq}: {r.variant} / plain = {r.tok_s / base.tok_s:.2f}x tok/s")
    return "\n".join(rows)


def environment() -> dict[str, Any]:
    from importlib import metadata

    env = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    for pkg in ("transformers", "peft", "triton", "bitsandbytes", "flash-linear-attention"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "missing"
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cardforge.train.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="qwen36_27b")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers (quick checks)")
    p.add_argument("--seq", type=int, nargs="*", default=[4096, 8192])
    p.add_argument("--mix", type=int, default=0, metavar="N",
                   help="also run a realistic length mix: N samples drawn by card_lengths (1k-32k, median 4k, long "
                        "tail; the first is --mix-max); cardforge variants pack them into rows of --row tokens")
    p.add_argument("--mix-max", type=int, default=MIX_MAX)
    p.add_argument("--lengths-from", type=Path, default=None, metavar="FILE",
                   help="draw the mix's lengths from FILE instead of card_lengths: a data stage's trajectories.jsonl "
                        "(with --tokenizer), pre-tokenized JSONL rows, a JSON list or one length per line; --mix 0 "
                        "with it: every length in the file")
    p.add_argument("--tokenizer", default=None, metavar="MODEL",
                   help="model dir or HF id whose chat template renders --lengths-from trajectories (as the train "
                        "stage does)")
    p.add_argument("--row", type=int, default=MIX_MAX, help="packed row length for the mix (one compiled shape)")
    p.add_argument("--plain-samples", type=int, default=6,
                   help="plain runs the first K samples of the mix (batch 1, unpacked: minutes per long sample)")
    p.add_argument("--mix-variants", nargs="*", default=None, help="variants for the mix (default: --variants)")
    p.add_argument("--variants", nargs="+", default=["plain", "cardforge+layers+tf32@0.1"], help=SPEC_HELP)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--profile", nargs="*", default=None, metavar="VARIANT",
                   help="print the top kernels of one step of these variants (all when none named)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    lengths: list[int] = []
    source = ""
    if args.lengths_from is not None:  # read before the model is built: a bad file fails in seconds, not minutes
        try:
            lengths, source = lengths_from(args.lengths_from, args.mix, args.mix_max, args.tokenizer)
        except (OSError, ValueError, UserError) as e:
            p.error(str(e))
    elif args.mix:
        lengths, source = card_lengths(args.mix, max_len=args.mix_max), card_lengths.__doc__.split("\n\n")[0]
    # fewer fragmented blocks: reserved memory close to allocated (set before CUDA initialises; both variants)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    variants = []
    for spec in args.variants:
        try:
            variants.append(parse_variant(spec))
        except ValueError as exc:
            p.error(f"--variants: {exc}")
    on_cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if on_cuda else torch.float32
    config = text_config(ARCHS[args.arch], args.layers)
    t0 = time.perf_counter()
    model = build_model(config, args.device, dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(model)
    n_lora = sum(p.numel() for p in lora_params(model).values())
    print(f"built {args.arch} ({config.num_hidden_layers} layers) + LoRA ({n_lora / 1e6:.0f}M params) on "
          f"{args.device} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    snapshot = {n: p.detach().clone() for n, p in lora_params(model).items()}
    results = []
    for seq in args.seq:
        flops_tok = model_flops_per_token(config, seq)
        for v in variants:
            results.append(run_variant(model, v, seq, args.steps, args.warmup, snapshot, args.device, flops_tok,
                                       profile=on_cuda and args.profile is not None
                                       and (not args.profile or v.name in args.profile)))
            if args.out:  # after every variant: a later crash or timeout keeps what was measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(
                    {"arch": args.arch, "layers": config.num_hidden_layers, "device": args.device,
                     "environment": environment(), "lora_params": n_lora, "argv": argv if argv else sys.argv[1:],
                     "results": [r.__dict__ for r in results], "table": table(results)}, indent=2))
    mix_results: list[MixResult] = []
    if args.mix or lengths:
        samples = mix_samples(lengths, config.vocab_size)
        print(f"mix ({source}): {length_summary(lengths, args.row)}; lengths {sorted(lengths)}", file=sys.stderr,
              flush=True)
        for spec in (args.mix_variants or args.variants):
            v = parse_variant(spec)
            chosen = samples if v.kernels == "cardforge" else samples[: args.plain_samples]
            mix_results.append(run_mix(model, v, chosen, args.row, snapshot, args.device))
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(
                    {"arch": args.arch, "layers": config.num_hidden_layers, "device": args.device,
                     "environment": environment(), "lora_params": n_lora, "argv": argv if argv else sys.argv[1:],
                     "results": [r.__dict__ for r in results], "table": table(results),
                     "mix": {"lengths": lengths, "distribution": source,
                             "summary": length_summary(lengths, args.row),
                             "results": [r.__dict__ for r in mix_results], "table": mix_table(mix_results)}},
                    indent=2))
    if results:
        print(table(results))
    if mix_results:
        print(mix_table(mix_results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
