"""Attention for packed rows: each token attends only to the earlier tokens of its own sample.

`fast.enable` registers this as the model's attention implementation (`ATTENTION`). Without packing keywords it is
transformers' SDPA path unchanged (causal flash/efficient kernels). With them (`cf_pos`, and on CUDA `cf_cu_seqlens`
+ `cf_attn_meta`, built by `cardforge.train.packing.collate_packed`):

- CUDA: FlashAttention's variable-length kernel (`aten._flash_attention_forward/backward`, the kernels behind
  `torch.nn.attention.varlen`), the rows flattened to [B*T, H, D] and cut at `cf_cu_seqlens`: block-diagonal
  causal attention at flash cost (no [T, T] mask; grouped KV heads native). It runs as the custom op
  `cardforge::varlen_attn`, opaque to torch.compile: the segment count and the longest sample come from a CPU
  tensor (`cf_attn_meta`), so neither is a Python int the compiled layer would specialise on, and
  `cf_cu_seqlens` has a fixed length (B*T + 1, padded with B*T), so one compiled graph serves every packing of a
  row length.
- elsewhere (CPU tests): SDPA with the equivalent block-diagonal causal boolean mask built from `cf_pos`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION = "cardforge_packed"


def _segments(pos: torch.Tensor) -> torch.Tensor:
    """[B, T] positions within samples -> [B, T] sample index (0-based) within the row."""
    return (pos == 0).to(torch.int32).cumsum(-1)


def block_causal_mask(pos: torch.Tensor) -> torch.Tensor:
    """[B, T] positions within samples -> [B, 1, T, T] bool: query i may see key j (same sample, j <= i)."""
    seg = _segments(pos)
    T = pos.shape[-1]
    idx = torch.arange(T, device=pos.device)
    causal = idx[:, None] >= idx[None, :]
    return ((seg[:, :, None] == seg[:, None, :]) & causal)[:, None]


def _flash_args(meta: torch.Tensor) -> tuple[int, int]:
    n, longest = (int(x) for x in meta.tolist())  # a CPU tensor: no device sync
    return n, longest


@torch.library.custom_op("cardforge::varlen_attn", mutates_args=())
def varlen_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, meta: torch.Tensor,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention within segments. q [N, H, D], k/v [N, Hkv, D] (N = B*T), cu_seqlens int32 [>= n+1] (the
    first n+1 entries are the segment offsets), meta CPU int64 [2] = (n, longest segment) -> (out [N, H, D],
    logsumexp [H, N])."""
    n, longest = _flash_args(meta)
    cu = cu_seqlens[: n + 1]
    out, lse = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, True, False,
                                                       scale=scale)[:2]
    return out, lse


@varlen_attn.register_fake
def _(q, k, v, cu_seqlens, meta, scale):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("cardforge::varlen_attn_backward", mutates_args=())
def varlen_attn_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, cu_seqlens: torch.Tensor, meta: torch.Tensor,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, longest = _flash_args(meta)
    cu = cu_seqlens[: n + 1]
    rng = torch.zeros((2,), dtype=torch.uint64, device=q.device)  # no dropout: the philox state is never read
    unused = torch.empty(0, device=q.device)
    dq, dk, dv = torch.ops.aten._flash_attention_backward(grad, q, k, v, out, lse, cu, cu, longest, longest, 0.0,
                                                          True, rng, unused, scale=scale)
    return dq, dk, dv


@varlen_attn_backward.register_fake
def _(grad, q, k, v, out, lse, cu_seqlens, meta, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output) -> None:
    q, k, v, cu, meta, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu, meta)
    ctx.scale = scale


def _grad(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu, meta = ctx.saved_tensors
    dq, dk, dv = varlen_attn_backward(grad_out.contiguous(), q, k, v, out, lse, cu, meta, ctx.scale)
    return dq, dk, dv, None, None, None


varlen_attn.register_autograd(_grad, setup_context=_setup)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, cf_pos: torch.Tensor | None = None,
              cf_cu_seqlens: torch.Tensor | None = None, cf_attn_meta: torch.Tensor | None = None, **kwargs):
    """transformers' attention-interface signature: query [B, H, T, D], key/value [B, Hkv, T, D] ->
    ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cf_pos is None:  # not packed: transformers' own SDPA path
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    B, H, T, D = query.shape
    scale = float(scaling) if scaling is not None else D ** -0.5
    if query.is_cuda and cf_cu_seqlens is not None and cf_attn_meta is not None:
        def flat(x):
            return x.transpose(1, 2).reshape(B * T, x.shape[1], D)

        dtype = query.dtype  # flash takes bf16/fp16; under autocast q/k/v already are
        if dtype not in (torch.bfloat16, torch.float16):
            dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        out, _ = varlen_attn(flat(query).to(dtype), flat(key).to(dtype), flat(value).to(dtype), cf_cu_seqlens,
                             cf_attn_meta, scale)
        out = out.reshape(B, T, H, D)
        return (out if torch.is_autocast_enabled("cuda") else out.to(query.dtype)), None  # as SDPA under autocast
    groups = H // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=block_causal_mask(cf_pos), scale=scale)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `ATTENTION` a valid `config._attn_implementation` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, attention)
    try:  # transformers builds no mask for it (packed rows pass their masks as None anyway)
        from transformers import AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask

        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    except ImportError:
        pass
