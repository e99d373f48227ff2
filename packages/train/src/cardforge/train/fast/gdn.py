"""Gated DeltaNet for training, in plain PyTorch: the chunked form with one matmul per chunk in the scan.

transformers' reference (`torch_chunk_gated_delta_rule`) is what runs when flash-linear-attention is absent or
refuses the GPU (fla 0.6 refuses Hopper with Triton < 3.7.1: wrong gradients in chunk_bwd_dqkwg). Its scan over
chunks does five small ops per chunk, each launched on its own, and autograd records them all. Here the work
that does not depend on the recurrent state is done for every chunk at once, and the state recurrence is folded
into an affine map per chunk:

    S_{i+1} = M_i S_i + C_i      M_i = exp(g_last_i) I - Kd_i^T W_i     C_i = Kd_i^T U_i

(U, W: the UT transform's new values and decayed keys; Kd: keys decayed to the chunk's end), so the scan is one
batched `baddbmm` per chunk, and the outputs of all chunks are two batched matmuls once the states are known:

    O_i = (Qd_i - A_i W_i) S_i + A_i U_i      (A_i: the causal intra-chunk attention with decays)

Same maths as the reference (tests compare outputs and gradients). Inputs are upcast to fp32 like transformers'
reference; under bf16 autocast (the train stage on GPU) the matmuls still run on bf16 operands with fp32
accumulation, as fla's kernels do, and the gating/decay elementwise math stays fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)  # transformers' / fla's l2norm


def chunk_gated_delta_rule(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, chunk_size: int = 64, use_qk_l2norm: bool = True,
                           scan_op: bool = False, reset: torch.Tensor | None = None) -> torch.Tensor:
    """query/key [B, T, Hk, Dk], value [B, T, Hv, Dv], g (log decay, <= 0) and beta [B, T, Hv] -> out [B, T, Hv, Dv].

    No initial state and no final state: training on whole sequences (generation keeps transformers' path).
    `reset` [B, T] (bool, packed rows): True where a new sample starts; the recurrent state is zero there, as if
    the sample ran alone. Inside a chunk the boundaries are masks (no chunk is realigned, so the shapes do not
    depend on where samples start): pairs of tokens in different samples get no decay factor (the intra-chunk
    attention and the UT transform become block-diagonal), a token after a boundary does not read the state the
    chunk starts from, a token before one does not write into the state the chunk hands on, and a chunk with a
    boundary does not decay its incoming state into the next one. Indicators multiply exact 0/1 factors, so the
    result equals the samples run one by one (tests: float64, against the token recurrence per sample).
    """
    out_dtype = value.dtype
    B, T, Hk, Dk = key.shape
    Hv, Dv = value.shape[-2:]
    if Hv != Hk:  # grouped value heads: each q/k head serves Hv // Hk consecutive value heads
        query = query.repeat_interleave(Hv // Hk, dim=2)
        key = key.repeat_interleave(Hv // Hk, dim=2)
    up = torch.promote_types(value.dtype, torch.float32)  # fp32 (float64 inputs stay float64: exactness tests)
    q, k, v = (x.transpose(1, 2).to(up) for x in (query, key, value))  # [B, H, T, D]
    beta, g = beta.transpose(1, 2).to(up), g.transpose(1, 2).to(up)  # [B, H, T]
    if use_qk_l2norm:
        q, k = _l2norm(q), _l2norm(k)
    q = q * Dk ** -0.5

    pad = (-T) % chunk_size
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta, g = F.pad(beta, (0, pad)), F.pad(g, (0, pad))
    n = (T + pad) // chunk_size
    C = chunk_size
    q, k, v = (x.reshape(B, Hv, n, C, -1) for x in (q, k, v))
    beta, g = beta.reshape(B, Hv, n, C), g.reshape(B, Hv, n, C)

    gc = g.cumsum(-1)  # log decay from the chunk's start to each position
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    g_last = gc[..., -1:]  # [B, H, n, 1]
    read_init = write_end = keep = None
    if reset is not None:
        r = reset.to(torch.int32)
        if pad:
            r = F.pad(r, (0, pad))
        rc = r.reshape(B, 1, n, C).cumsum(-1)  # boundaries in the chunk up to and including each token
        same = rc.unsqueeze(-1) == rc.unsqueeze(-2)  # [B, 1, n, C, C]: the two tokens are in one sample
        causal = causal & same
        read_init = (rc == 0).to(gc.dtype)  # still in the sample the chunk started in
        write_end = (rc == rc[..., -1:]).to(gc.dtype)  # in the sample the chunk ends in
        keep = (rc[..., -1:] == 0).to(gc.dtype)  # no boundary in the chunk: the incoming state carries on
    decay = (gc.unsqueeze(-1) - gc.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()  # [B, H, n, C, C]
    k_beta = k * beta.unsqueeze(-1)
    # UT transform: T = (I + strictly_lower(diag(beta) K K^T * decay))^-1, solved once per chunk
    ut = (k_beta @ k.transpose(-1, -2)) * decay
    eye = torch.eye(C, dtype=ut.dtype, device=ut.device)
    t_inv = torch.linalg.solve_triangular(ut.tril(-1) + eye, eye.expand_as(ut), upper=False, unitriangular=True)
    u = t_inv @ (v * beta.unsqueeze(-1))  # new values
    from_start = gc.exp() if read_init is None else gc.exp() * read_init
    to_end = (g_last - gc).exp() if write_end is None else (g_last - gc).exp() * write_end
    carry = g_last.exp() if keep is None else g_last.exp() * keep
    w = t_inv @ (k_beta * from_start.unsqueeze(-1))  # keys decayed from the chunk start, read the old state

    kd = k * to_end.unsqueeze(-1)  # keys decayed to the chunk's end
    qd = q * from_start.unsqueeze(-1)  # queries read the state decayed from the chunk start
    attn = (q @ k.transpose(-1, -2)) * decay  # causal intra-chunk attention, diagonal included

    kd_t = kd.transpose(-1, -2)  # [B, H, n, Dk, C]
    m = torch.diag_embed(carry.expand(B, Hv, n, Dk)) - kd_t @ w  # [B, H, n, Dk, Dk]
    c = kd_t @ u  # [B, H, n, Dk, Dv]
    m, c = m.reshape(B * Hv, n, Dk, Dk), c.reshape(B * Hv, n, Dk, Dv)
    if scan_op:  # one dtype, at least fp32: under autocast `kd_t @ u` comes out bf16 while m is fp32
        dt = torch.promote_types(torch.promote_types(m.dtype, c.dtype), torch.float32)
        s = state_scan(m.to(dt), c.to(dt)).reshape(B, Hv, n, Dk, Dv)
    else:
        # unbind, not c[:, i]: the backward of n selects would zero-fill and add n full-size gradients
        ms, cs = m.unbind(1), c.unbind(1)
        states = [torch.zeros(B * Hv, Dk, Dv, dtype=c.dtype, device=c.device)]
        for i in range(n - 1):  # the only sequential part: one batched matmul-add per chunk
            states.append(torch.baddbmm(cs[i], ms[i], states[-1]))
        s = torch.stack(states, dim=1).reshape(B, Hv, n, Dk, Dv)  # the state each chunk starts from

    o = (qd - attn @ w) @ s + attn @ u  # [B, H, n, C, Dv]
    o = o.reshape(B, Hv, n * C, Dv)[:, :, :T]
    return o.transpose(1, 2).to(out_dtype)


@torch.library.custom_op("cardforge::gdn_state_scan", mutates_args=())
def state_scan(m: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The state each chunk starts from: S_0 = 0, S_{i+1} = M_i S_i + C_i. m [BH, n, Dk, Dk], c [BH, n, Dk, Dv] ->
    [BH, n, Dk, Dv] (M_{n-1}, C_{n-1} lead past the sequence: unused).

    `chunk_gated_delta_rule(scan_op=True)` (bench option `+scanop`; on whenever layers are compiled,
    `fast.enable(scan_op=None)`): a custom op, opaque to torch.compile. Without it the scan is a Python loop that a
    compiled layer unrolls (512 steps at 32k tokens, forward and backward graph), so compile time grows with the length; as an
    op with its own backward the compiled graph is the same size at any length, autograd records one node
    instead of one per chunk, and the recurrence runs in fp32 even inside bf16 autocast."""
    n = m.shape[1]
    m, c = m.contiguous(), c.contiguous()
    out = torch.empty_like(c)  # the only buffer: steps are read and written as [:, i] views, no transposed copies
    out[:, 0].zero_()
    with torch.autocast(m.device.type, enabled=False):  # runs inside the bf16 step: the recurrence stays fp32
        for i in range(n - 1):
            torch.baddbmm(c[:, i], m[:, i], out[:, i], out=out[:, i + 1])
    return out


@state_scan.register_fake
def _(m: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(c)


@torch.library.custom_op("cardforge::gdn_state_scan_backward", mutates_args=())
def state_scan_backward(m: torch.Tensor, states: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse scan: G_i = dS_i + M_i^T G_{i+1} (G for the states after chunk i), then dM_i = G_{i+1} S_i^T and
    dC_i = G_{i+1} for i < n-1, all chunks in one batched matmul. dC is the buffer the reverse scan writes
    (dC_{i-1} = G_i), so the backward allocates its two outputs and nothing else (at 32k tokens on the 27B each
    is 1.5 GiB per GDN layer)."""
    n = m.shape[1]
    dc = torch.empty_like(grad)  # dc[:, i] = G_{i+1}; G_n = 0
    dc[:, n - 1].zero_()
    with torch.autocast(m.device.type, enabled=False):
        if n > 1:
            dc[:, n - 2].copy_(grad[:, n - 1])
        for i in range(n - 2, 0, -1):
            torch.baddbmm(grad[:, i], m[:, i].transpose(-1, -2), dc[:, i], out=dc[:, i - 1])
        dm = dc @ states.transpose(-1, -2)  # dm[:, n-1] = 0 (dc[:, n-1] = 0)
    return dm, dc


@state_scan_backward.register_fake
def _(m: torch.Tensor, states: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(m), torch.empty_like(states)


def _scan_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output)


def _scan_grad(ctx, grad: torch.Tensor):
    m, states = ctx.saved_tensors
    return state_scan_backward(m, states, grad.contiguous())


state_scan.register_autograd(_scan_grad, setup_context=_scan_setup)


def reference(query, key, value, g, beta, chunk_size: int = 64, reset: torch.Tensor | None = None) -> torch.Tensor:
    """The token-by-token recurrence (exact, slow): the ground truth tests compare both chunked forms with.
    `reset` [B, T]: the state is zeroed before each token where it is True (a packed sample's first token)."""
    B, T, Hk, Dk = key.shape
    Hv, Dv = value.shape[-2:]
    if Hv != Hk:
        query = query.repeat_interleave(Hv // Hk, dim=2)
        key = key.repeat_interleave(Hv // Hk, dim=2)
    q, k = _l2norm(query.float()) * Dk ** -0.5, _l2norm(key.float())
    v, g, beta = value.float(), g.float(), beta.float()
    s = torch.zeros(B, Hv, Dk, Dv, dtype=torch.float32, device=v.device)
    out = []
    for t in range(T):
        if reset is not None:
            s = s * (~reset[:, t].bool()).to(s.dtype)[:, None, None, None]
        s = s * g[:, t].exp()[..., None, None]
        kt, vt = k[:, t], v[:, t]  # [B, H, D]
        pred = torch.einsum("bhk,bhkv->bhv", kt, s)
        s = s + torch.einsum("bhk,bhv->bhkv", kt, (vt - pred) * beta[:, t, :, None])
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t], s))
    return torch.stack(out, dim=1).to(value.dtype)
