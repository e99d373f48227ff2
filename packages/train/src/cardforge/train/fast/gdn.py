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

import contextlib
import functools

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
    instead of one per chunk, and the recurrence runs in fp32 even inside bf16 autocast. On CUDA (float32, Dk and
    Dv powers of two in 16-256, triton importable) the whole scan, and its backward's reverse scan, is one Triton
    launch (`_scan_triton`); elsewhere a Python loop of one `baddbmm` per chunk."""
    m, c = m.contiguous(), c.contiguous()
    if _use_triton(m, c):
        out = _scan_triton(m, c, reverse=False)
        if out is not None:
            return out
    return _scan_loop(m, c)


def _scan_loop(m: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """`state_scan` as a Python loop, one `baddbmm` launch per chunk (CPU, no Triton, other dtypes or shapes)."""
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
    m, grad = m.contiguous(), grad.contiguous()
    dc = _scan_triton(m, grad, reverse=True) if _use_triton(m, grad) else None
    if dc is None:
        dc = _scan_backward_loop(m, grad)
    with torch.autocast(m.device.type, enabled=False):
        dm = dc @ states.transpose(-1, -2)  # dm[:, n-1] = 0 (dc[:, n-1] = 0)
    return dm, dc


def _scan_backward_loop(m: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The reverse scan of `state_scan_backward` as a Python loop: dc[:, n-1] = 0, dc[:, i-1] = grad[:, i] +
    M_i^T dc[:, i] (one `baddbmm` launch per chunk)."""
    n = m.shape[1]
    dc = torch.empty_like(grad)  # dc[:, i] = G_{i+1}; G_n = 0
    dc[:, n - 1].zero_()
    with torch.autocast(m.device.type, enabled=False):
        if n > 1:
            dc[:, n - 2].copy_(grad[:, n - 1])
        for i in range(n - 2, 0, -1):
            torch.baddbmm(grad[:, i], m[:, i].transpose(-1, -2), dc[:, i], out=dc[:, i - 1])
    return dc


@state_scan_backward.register_fake
def _(m: torch.Tensor, states: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(m), torch.empty_like(states)


def _scan_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output)


def _scan_grad(ctx, grad: torch.Tensor):
    m, states = ctx.saved_tensors
    return state_scan_backward(m, states, grad.contiguous())


state_scan.register_autograd(_scan_grad, setup_context=_scan_setup)


# ---- The scan in one Triton launch (CUDA) --------------------------------------------------------------------
# The loops above launch one `baddbmm` per chunk: 63 per GDN layer and pass at 4096 tokens, 511 at 32k, and the
# step on an H100 is then bound by the CPU launching them. `_affine_scan_kernel` runs the whole scan in one launch:
# program (bh, v-block) keeps its [Dk, BV] slice of the state in fp32 registers and walks the chunks,
#     y[dst] = A @ y[src] + x[idx],   forward: A = M_i, dst = i+1;   reverse: A = M_i^T, dst = i-1,
# writing the zero state it starts from itself. Columns of the state are independent (A acts on rows), so the
# v-blocks need no communication. Only float32 tensors, Dk and Dv powers of two in [16, 256]; otherwise, on CPU,
# or without triton the loops run.

_TRITON_DIMS = (16, 32, 64, 128, 256)


@functools.lru_cache(maxsize=1)
def _triton_kernel():
    """The jitted kernel, or None when triton does not import (CPU wheels, CI). Built on first use: importing
    triton costs time, and TRITON_INTERPRET (Triton's CPU interpreter, tests) is read when the kernel is built."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def _affine_scan_kernel(a_ptr, x_ptr, y_ptr, n_steps, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr,
                            REVERSE: tl.constexpr, PRECISION: tl.constexpr, KSPLIT: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        rows = tl.arange(0, DK)
        cols = tl.program_id(1) * BV + tl.arange(0, BV)
        a_base = a_ptr + bh * n_steps * DK * DK
        x_base = x_ptr + bh * n_steps * DK * DV
        y_base = y_ptr + bh * n_steps * DK * DV
        BK: tl.constexpr = DK // 4 if KSPLIT else DK  # KSPLIT: A in four column blocks, the state in four row blocks
        kk = tl.arange(0, BK)
        if REVERSE:  # A = M^T: element [r, k] of the tile read from M[k, r]
            a_off = kk[None, :] * DK + rows[:, None]
            k_stride: tl.constexpr = BK * DK  # from one column block of A to the next
        else:
            a_off = rows[:, None] * DK + kk[None, :]
            k_stride: tl.constexpr = BK
        xy_off = rows[:, None] * DV + cols[None, :]
        state = tl.zeros([DK, BV], dtype=tl.float32)
        if REVERSE:
            tl.store(y_base + (n_steps - 1) * DK * DV + xy_off, state)
        else:
            tl.store(y_base + xy_off, state)
        for step in range(0, n_steps - 1):
            if REVERSE:  # int32 offsets within one head: n * Dk * max(Dk, Dv) < 2^31 (checked by the caller)
                idx = n_steps - 1 - step
                dst = idx - 1
            else:
                idx = step
                dst = idx + 1
            a_i = a_base + idx * DK * DK + a_off
            x = tl.load(x_base + idx * DK * DV + xy_off)
            if KSPLIT:  # full fp32 (FMA dot): one [Dk, Dk] x [Dk, BV] dot spills registers, four K-quarters do not
                lo, hi = tl.split(tl.permute(tl.reshape(state, [2, DK // 2, BV]), (1, 2, 0)))  # rows [0, Dk/2), rest
                s0, s1 = tl.split(tl.permute(tl.reshape(lo, [2, DK // 4, BV]), (1, 2, 0)))
                s2, s3 = tl.split(tl.permute(tl.reshape(hi, [2, DK // 4, BV]), (1, 2, 0)))
                state = tl.dot(tl.load(a_i), s0, acc=x, input_precision=PRECISION)
                state = tl.dot(tl.load(a_i + k_stride), s1, acc=state, input_precision=PRECISION)
                state = tl.dot(tl.load(a_i + 2 * k_stride), s2, acc=state, input_precision=PRECISION)
                state = tl.dot(tl.load(a_i + 3 * k_stride), s3, acc=state, input_precision=PRECISION)
            else:
                state = tl.dot(tl.load(a_i), state, acc=x, input_precision=PRECISION)
            tl.store(y_base + dst * DK * DV + xy_off, state)

    return _affine_scan_kernel


def _use_triton(m: torch.Tensor, x: torch.Tensor) -> bool:
    """Production dispatch: the Triton scan only for CUDA float32 tensors of supported shapes, triton importable."""
    return (m.is_cuda and x.is_cuda and m.dtype == x.dtype == torch.float32 and m.shape[-1] in _TRITON_DIMS
            and x.shape[-1] in _TRITON_DIMS and _triton_kernel() is not None)


def _triton_configs(dk: int, dv: int) -> list[tuple[int, int, int]]:
    """(BV, num_warps, num_stages) to try in order. Measured on one H100 (2026-12-07, BH 48, Dk = Dv = 128, n = 512,
    full fp32, `tests/gpu/test_fast_gpu.py`): BV 16 with 8 warps and 1 stage 6.58 ms forward / 5.56 ms reverse
    (BH * 8 = 384 programs), BV 64 / 8 warps / 2 stages 8.58 / 8.04, BV 32 / 8 / 2 9.41 / 9.08, BV 128 30.3 / 29.1,
    4 warps 2-5x slower at BV 64 (the cuBLAS loop: 14.75 ms forward). The rest are fallbacks for shared memory
    (`OutOfResources` at launch): compiled ahead of time for sm_90a with Triton 3.6, BV 64 full fp32 (the FMA dot,
    K split in four) needs 112 KiB shared memory, 255 registers, ~0.7 KB of spills per thread; Dk = 256 spills
    ~13 KB per thread."""
    warps = 8 if dk >= 128 else 4
    return [(min(dv, 16), warps, 1), (min(dv, 64), warps, 2), (min(dv, 64), warps, 1), (min(dv, 32), warps, 1)]


_triton_config_cache: dict = {}


def _scan_triton(a: torch.Tensor, x: torch.Tensor, reverse: bool, precision: str | None = None,
                 config: tuple[int, int, int] | None = None) -> torch.Tensor | None:
    """The affine scan in one launch. a [BH, n, Dk, Dk], x [BH, n, Dk, Dv] float32 (contiguous) -> y [BH, n, Dk, Dv]:
    forward y[0] = 0, y[i+1] = a_i y[i] + x_i (`state_scan`); reverse y[n-1] = 0, y[i-1] = a_i^T y[i] + x_i (the
    backward's dc). `precision`: "ieee" (full fp32, the default) or "tf32". Not TF32 by default, even where
    `torch.backends.cuda.matmul.allow_tf32` makes the `baddbmm` loop use it: on one H100 (2026-12-07, BH 48,
    Dk = Dv = 128) this kernel's TF32 states were 3.7e-3 (n = 64) and 4.0e-3 (n = 512) from a float64 scan, the
    cuBLAS TF32 loop's 5.2e-4 / 5.4e-4 (likely: Triton's TF32 dot truncates its operands where cuBLAS rounds,
    and the bias compounds through the recurrence); full fp32 was 4.9e-7 / 5.1e-7 (loop 4.1e-7 / 4.3e-7) and
    still 1.7x faster than the fp32 loop in its slowest config. CUDA tensors; CPU tensors only under
    TRITON_INTERPRET=1 (tests). None when no config fits the GPU (shared memory): the caller's loop runs."""
    kernel = _triton_kernel()
    if kernel is None:
        raise RuntimeError("triton is not importable")
    from triton.runtime.errors import OutOfResources

    bh, n, dk, dv = x.shape
    if a.shape != (bh, n, dk, dk) or dk not in _TRITON_DIMS or dv not in _TRITON_DIMS:
        raise ValueError(f"unsupported shapes for the Triton scan: a {tuple(a.shape)}, x {tuple(x.shape)}")
    if a.dtype != torch.float32 or x.dtype != torch.float32:
        raise ValueError("the Triton scan takes float32 tensors")
    if n * dk * max(dk, dv) >= 2 ** 31:
        return None  # past the kernel's int32 offsets within one head (over 2M tokens at Dk = Dv = 128)
    a, x = a.contiguous(), x.contiguous()
    if precision is None:  # full fp32 whatever allow_tf32 says: Triton's TF32 mode measured 4e-3 (docstring)
        precision = "ieee"
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    key = (a.device, dk, dv, precision, reverse)
    if config is not None:
        configs = [config]
    elif key in _triton_config_cache:  # the config that fitted last time, or None: none did (Dk = 256)
        configs = [_triton_config_cache[key]] if _triton_config_cache[key] is not None else []
    else:
        configs = _triton_configs(dk, dv)
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
        for bv, warps, stages in configs:
            try:
                kernel[(bh, dv // bv)](a, x, y, n, DK=dk, DV=dv, BV=bv, REVERSE=reverse, PRECISION=precision,
                                       KSPLIT=precision == "ieee" and dk >= 64, num_warps=warps, num_stages=stages)
            except OutOfResources:  # raised at launch, before the kernel runs: try the next config
                continue
            if config is None:
                _triton_config_cache[key] = (bv, warps, stages)
            return y
    if config is None:
        _triton_config_cache[key] = None
    return None


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
