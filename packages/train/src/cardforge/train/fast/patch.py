"""Swap cardforge's Gated DeltaNet forward into a transformers Qwen3.5 model (and back)."""

from __future__ import annotations

import functools
import math
import types

import torch
import torch.utils.checkpoint
import torch.nn.functional as F

from cardforge.train.fast import attention
from cardforge.train.fast.gdn import chunk_gated_delta_rule

_NEEDED = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "conv1d", "norm", "out_proj", "A_log", "dt_bias",
           "head_k_dim", "head_v_dim", "key_dim", "value_dim")


def _swap_forward(module: torch.nn.Module, keep_as: str, forward) -> None:
    """Bind `forward` to `module`, keeping its own forward under `keep_as` (once: enabling twice is a no-op)."""
    if not hasattr(module, keep_as):
        setattr(module, keep_as, module.forward)
        module.forward = types.MethodType(forward, module)


def _restore_forward(module: torch.nn.Module, kept_as: str) -> None:
    if hasattr(module, kept_as):
        module.forward = getattr(module, kept_as)
        delattr(module, kept_as)


def _gdn_modules(model: torch.nn.Module):
    return [m for m in model.modules() if type(m).__name__.endswith("GatedDeltaNet")]


def packed_conv(conv: torch.nn.Conv1d, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """The depthwise causal conv1d of a packed row, reset at every sample start: x [B, T, C], pos [B, T] (position
    within the sample; None: each row is one sample) -> [B, T, C]. out[t] = sum_d w[K-1-d] x[t-d] over the taps
    d <= pos[t] only (a sample's first tokens see zeros before them, as when it runs alone); accumulated in fp32
    (what the conv kernel does), one fused kernel inside a compiled layer (forward and backward: K shifted
    multiply-adds, where the eager depthwise conv kernel took ~0.44 ms per call at 4k tokens on the 27B)."""
    K = conv.weight.shape[-1]
    acc = torch.promote_types(x.dtype, torch.float32)
    w = conv.weight[:, 0, :].to(acc)  # [C, K]
    xf = x.to(acc)
    out = xf * w[:, K - 1]
    for d in range(1, K):
        shifted = F.pad(xf[:, :-d], (0, 0, d, 0))  # x[t-d], zero before the row
        out = out + (shifted if pos is None else shifted * (pos >= d).unsqueeze(-1).to(out.dtype)) * w[:, K - 1 - d]
    if conv.bias is not None:
        out = out + conv.bias.to(acc)
    return out.to(x.dtype if not torch.is_autocast_enabled(x.device.type)
                  else torch.get_autocast_dtype(x.device.type))


def _forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, cf_pos=None, **kwargs):
    if cache_params is not None:  # generation: transformers' cached path
        return self._cf_transformers_forward(hidden_states, cache_params=cache_params,
                                             attention_mask=attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[0] > 1 \
            and attention_mask.shape[1] > 1:  # right padding in a batch: padded positions write nothing
        hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
    bsz, seq_len, _ = hidden_states.shape
    mixed = self.in_proj_qkv(hidden_states)  # same call order as transformers (LoRA dropout RNG order)
    z = self.in_proj_z(hidden_states)
    b = self.in_proj_b(hidden_states)
    a = self.in_proj_a(hidden_states)
    if cf_pos is None and not torch.compiler.is_compiling():  # eager: the conv kernel
        mixed = F.silu(self.conv1d(mixed.transpose(1, 2))[..., :seq_len]).transpose(1, 2)
    else:  # packed row (the conv restarts at every sample), or inside a compiled layer (fused with its neighbours)
        mixed = F.silu(packed_conv(self.conv1d, mixed, cf_pos))
    query, key, value = torch.split(mixed, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
    query = query.reshape(bsz, seq_len, -1, self.head_k_dim)
    key = key.reshape(bsz, seq_len, -1, self.head_k_dim)
    value = value.reshape(bsz, seq_len, -1, self.head_v_dim)
    beta = b.sigmoid()
    g = -self.A_log.float().exp() * torch.nn.functional.softplus(a.float() + self.dt_bias)
    out = _core(self, query, key, value, g, beta, None if cf_pos is None else cf_pos == 0)
    out = self.norm(out.reshape(-1, self.head_v_dim), z.reshape(-1, self.head_v_dim))
    return self.out_proj(out.reshape(bsz, seq_len, -1))


def _core(self, query, key, value, g, beta, reset):
    """The GDN core; with `_cf_core_groups` G > 0 (`enable(core_groups=G)`) and grad on, it runs in G groups of
    heads, each under non-reentrant checkpointing: the layer saves only the core's bf16 inputs, and the backward
    recomputes one head group at a time (the core's fp32 chunk tensors are what fills memory at long rows: ~15 of
    the ~31 GiB an eager 27B GDN layer saves at 32k tokens). Value head j reads key head j // (Hv / Hk), so group
    i takes key heads [i Hk/G, (i+1) Hk/G) and their value heads."""
    fn = functools.partial(self._cf_chunk_fn, scan_op=getattr(self, "_cf_scan_op", False), reset=reset)
    want = getattr(self, "_cf_core_groups", 0)
    if not want or not torch.is_grad_enabled():
        return fn(query, key, value, g, beta)
    groups = math.gcd(want, key.shape[2])  # 1: the whole core under one checkpoint
    hk, hv = key.shape[2] // groups, value.shape[2] // groups
    outs = []
    for i in range(groups):
        ks, vs = slice(i * hk, (i + 1) * hk), slice(i * hv, (i + 1) * hv)
        outs.append(torch.utils.checkpoint.checkpoint(fn, query[:, :, ks], key[:, :, ks], value[:, :, vs],
                                                      g[:, :, vs], beta[:, :, vs], use_reentrant=False))
    return torch.cat(outs, dim=2)


_COMPILED = None


def _compiled_chunk_fn():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(chunk_gated_delta_rule, dynamic=False)
    return _COMPILED


def _decoder_layers(model: torch.nn.Module):
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_layers(model: torch.nn.Module, mode: str | None = None) -> int:
    """Regional compilation: every decoder layer's call through `torch.compile` (norms, casts, SwiGLU, LoRA dropout,
    residual adds and the GDN core fused by Inductor). Layers of one kind share their compiled code (params are
    graph inputs), so a model compiles twice (GDN layer, attention layer) whatever its depth, once per sequence
    length (static shapes: the train stage pads batches into length buckets (`data.padded_length`) to bound
    the number of lengths; the GDN scan is unrolled in the graph, one step per 64 tokens, so compiles take
    longer for longer sequences). Gradient checkpointing stays outside: the recompute reruns the compiled
    forward. `mode`: torch.compile's mode ("reduce-overhead": each compiled layer replayed as a CUDA graph; the
    loop must call `torch.compiler.cudagraph_mark_step_begin()` before each step). Returns the number of layers."""
    layers = _decoder_layers(model)
    backend = compile_backend()
    for layer in layers:
        if getattr(layer, "_compiled_call_impl", None) is None:
            layer.compile(dynamic=False, backend=backend, **({"mode": mode} if mode else {}))
    return len(layers)


def compile_backend() -> str:
    """torch.compile's backend for compiled layers: inductor, unless CARDFORGE_COMPILE_BACKEND names another.
    The CPU checks of the distributed path set `aot_eager_decomp_partition`: dynamo, AOTAutograd, the decompositions
    and inductor's min-cut partitioner (where `trainer.activation_memory_budget` applies), without generating and
    building C++ kernels (minutes per layer kind on a loaded 2-core machine)."""
    import os

    return os.environ.get("CARDFORGE_COMPILE_BACKEND", "").strip() or "inductor"


def uncompile_layers(model: torch.nn.Module) -> None:
    for layer in _decoder_layers(model):
        layer._compiled_call_impl = None


def enable(model: torch.nn.Module, lora: bool = True, compile: bool = False, layers: bool = False,
           scan_op: bool | None = None, core_groups: int = 0, cudagraphs: bool = False) -> int:
    """Patch every Gated DeltaNet module of `model` (PEFT-wrapped or not) and, with `lora`, PEFT's LoRA Linear
    layers; `compile`: the GDN core through torch.compile (fuses its fp32 elementwise work); `layers`: every
    decoder layer through torch.compile (`compile_layers`; includes the GDN core); `scan_op`: the GDN state scan
    as the `cardforge::gdn_state_scan` op (`gdn.state_scan`); None = on with compiled layers (their graphs then
    stay the same size at any length instead of unrolling one scan step per 64 tokens); `core_groups` G > 0: the
    GDN core recomputed in the backward, G head groups one at a time (`_core`; long rows); `cudagraphs`: compiled
    layers replayed as CUDA graphs (`compile_layers(mode="reduce-overhead")`; experimental, the bench's
    `+cudagraphs`). Returns the number of GDN modules patched."""
    if scan_op is None:
        scan_op = layers
    mods = _gdn_modules(model)
    for m in mods:
        missing = [n for n in _NEEDED if not hasattr(m, n)]
        if missing:
            raise RuntimeError(f"{type(m).__name__} lacks {', '.join(missing)}: this transformers version is not "
                               "supported by cardforge's GDN kernel; set trainer.kernels=transformers")
        _swap_forward(m, "_cf_transformers_forward", _forward)
        m._cf_chunk_fn = _compiled_chunk_fn() if compile and not layers else chunk_gated_delta_rule
        m._cf_scan_op = scan_op
        m._cf_core_groups = core_groups
    if lora:
        enable_lora(model)
    _set_attention(model, attention.ATTENTION)
    if layers:
        if cudagraphs:
            compile_layers(model, mode="reduce-overhead")
        else:
            compile_layers(model)
    else:
        uncompile_layers(model)
    return len(mods)


def _configs(model: torch.nn.Module):
    seen = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen[id(cfg)] = cfg
    return list(seen.values())


def _set_attention(model: torch.nn.Module, name: str | None) -> None:
    """Packed rows need `attention.attention` (SDPA unchanged for unpacked batches); `disable` restores the
    implementation the model had."""
    if name is not None:
        attention.register()
    for cfg in _configs(model):
        if name is None:
            if hasattr(cfg, "_cf_attn_before"):
                cfg._attn_implementation = cfg._cf_attn_before
                del cfg._cf_attn_before
        else:
            if not hasattr(cfg, "_cf_attn_before"):
                cfg._cf_attn_before = cfg._attn_implementation
            cfg._attn_implementation = name


def disable(model: torch.nn.Module) -> None:
    _set_attention(model, None)
    uncompile_layers(model)
    for m in _gdn_modules(model):
        _restore_forward(m, "_cf_transformers_forward")
    disable_lora(model)


def enabled(model: torch.nn.Module) -> bool:
    mods = _gdn_modules(model)
    return bool(mods) and all(hasattr(m, "_cf_transformers_forward") for m in mods)


def _lora_forward(self, x: torch.Tensor, *args, **kwargs):
    """PEFT's vanilla LoRA Linear forward with the update folded into one addmm: result + s * (drop(x) A^T) B^T.

    PEFT first casts x to the adapter's fp32 dtype (a full fp32 copy of every adapted input, cast back to bf16 by
    autocast) and then scales and adds in two more passes over the output; here x stays as it comes and the scale
    and the add happen inside the matmul. Anything else (merged, several adapters, variants, extra kwargs) goes
    through PEFT's own forward."""
    active = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
            or active[0] not in self.lora_A or active[0] in getattr(self, "lora_variant", {})):
        return self._cf_peft_forward(x, *args, **kwargs)
    name = active[0]
    if x.dtype != self.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type):
        return self._cf_peft_forward(x, *args, **kwargs)  # PEFT's cast is what makes the dtypes meet
    result = self.base_layer(x)
    h = self.lora_A[name](self.lora_dropout[name](x))
    w_b = self.lora_B[name].weight
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), w_b.t().to(h.dtype),
                      alpha=self.scaling[name])
    return out.reshape(result.shape).to(result.dtype)


def _lora_linears(model: torch.nn.Module):
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:
        return []
    return [m for m in model.modules() if type(m) is Linear]


def enable_lora(model: torch.nn.Module) -> int:
    """Patch PEFT's LoRA Linear layers of `model` (see `_lora_forward`); returns how many."""
    mods = _lora_linears(model)
    for m in mods:
        _swap_forward(m, "_cf_peft_forward", _lora_forward)
    return len(mods)


def disable_lora(model: torch.nn.Module) -> None:
    for m in _lora_linears(model):
        _restore_forward(m, "_cf_peft_forward")
