"""Gradient checkpointing whose saved layer inputs live in pinned CPU memory (long packed rows on one GPU).

With checkpointing, what a step keeps between forward and backward is each decoder layer's input: at 32k tokens on
the 27B that is 64 x 32768 x 5120 bf16 = 20 GiB, on top of ~54 GiB of weights and LoRA state. `enable(model)` swaps
every checkpointed layer's checkpoint function for `offloaded_checkpoint`: the forward runs the layer without
keeping anything and copies its input to pinned host memory on a side stream (overlapping the next layers); while
a layer's backward runs, the input of the layer before it is copied back on that side stream (one layer input on
the GPU ahead); each layer's backward then reruns the layer with the forward's RNG state (same LoRA-dropout masks)
and backpropagates through it. The layer's parameters receive their gradients from that inner backward, as with
reentrant checkpointing.
"""

from __future__ import annotations

import functools
import types
import weakref

import torch

_STREAMS: dict[int, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _STREAMS:
        _STREAMS[idx] = torch.cuda.Stream(device=idx)
    return _STREAMS[idx]


def _to_host(x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cuda":
        return x.detach().clone()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    side = _side_stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        host.copy_(x.detach(), non_blocking=True)
    x.record_stream(side)  # the allocator keeps x's memory until the copy is done
    return host


# the offloaded layers of the forward in flight, in forward order: the backward runs them in reverse, so while one
# layer's backward runs, the input of the layer before it is copied back on the side stream (`_prefetch`)
_PENDING: list = []


def _prefetch(ctx) -> None:
    """Start copying `ctx`'s saved input back to its GPU on the side stream (one layer input at a time: 320 MiB at
    32k tokens on the 27B); its backward waits for the copy instead of making it on the compute stream."""
    if ctx.device.type != "cuda" or ctx.host is None or ctx.gpu is not None:
        return
    side = _side_stream(ctx.device)
    with torch.cuda.stream(side):  # after the forward's copy to the host (same stream); overlaps this backward
        ctx.gpu = ctx.host.to(ctx.device, non_blocking=True)


def _input_back(ctx) -> torch.Tensor:
    if ctx.device.type != "cuda":
        return ctx.host.to(ctx.device)
    current = torch.cuda.current_stream(ctx.device)
    current.wait_stream(_side_stream(ctx.device))  # the prefetch (or the forward's copy to the host) is done
    x = ctx.gpu
    if x is None:
        return ctx.host.to(ctx.device, non_blocking=True)
    x.record_stream(current)  # allocated on the side stream, used and freed on this one
    ctx.gpu = None
    return x


class _Offloaded(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, device_type: str, x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        ctx.run = run
        ctx.device = x.device
        ctx.host = _to_host(x)
        ctx.gpu = None
        if _PENDING and _PENDING[-1].out_ref() is not x:  # not the last layer's output: a new forward (entries left
            _PENDING.clear()  # by one that failed go; their graphs still hold what they saved). Identity, not the
            # address: a failed forward's freed output and the next forward's first input can share an address
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)) \
            if device_type in ("cuda", "cpu") else (False, None)
        ctx.device_type = device_type
        with torch.no_grad():
            out = run(x)
        ctx.out_ref = weakref.ref(out)  # apply hands this very tensor on to the next layer
        _PENDING.append(ctx)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x = _input_back(ctx).requires_grad_(True)
        at = next((i for i in range(len(_PENDING) - 1, -1, -1) if _PENDING[i] is ctx), None)
        if at is not None:
            del _PENDING[at:]  # this layer and any later ones (done, or left by a step that failed)
            if at:
                _prefetch(_PENDING[at - 1])  # the layer whose backward comes next
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            on, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=on):
                out = ctx.run(x)
        torch.autograd.backward(out, grad)
        ctx.host = ctx.run = None
        return None, None, x.grad, None


def offloaded_checkpoint(function, *args, **kwargs):
    """Drop-in for `torch.utils.checkpoint.checkpoint(function, hidden_states)` as transformers'
    GradientCheckpointingLayer calls it (the layer input first; everything else bound into `function`)."""
    x, rest = args[0], args[1:]
    if rest or kwargs:
        raise TypeError("offloaded_checkpoint takes the layer input alone (bind the rest into the function)")
    # an input that requires grad: the first layer's input (frozen embeddings) does not, yet its LoRA weights need
    # the backward to run
    if not torch.is_grad_enabled():  # evaluation: nothing to save, nothing to rerun
        return function(x)
    anchor = torch.empty(0, device=x.device, requires_grad=True)
    dev = x.device.type
    return _Offloaded.apply(lambda h: function(h), dev, x, anchor)


def _layers(model: torch.nn.Module):
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


_COMPILED: dict[type, object] = {}


def _offloaded_forward(self, hidden_states, *args, **kwargs):
    fn = self._cf_offload_fn
    return offloaded_checkpoint(functools.partial(fn, self, *args, **kwargs), hidden_states)


def enable(model: torch.nn.Module, compile: bool = False) -> int:
    """Every decoder layer checkpointed with its input in pinned host memory (`offloaded_checkpoint`), replacing
    transformers' gradient checkpointing of the layer; `compile`: the layer's forward through torch.compile inside the
    checkpoint (one compiled function per layer class, the layer an input: layers of one kind share it). Returns the
    number of layers."""
    layers = _layers(model)
    for layer in layers:
        cls = type(layer)
        if compile and cls not in _COMPILED:
            from cardforge.train.fast.patch import compile_backend

            _COMPILED[cls] = torch.compile(cls.forward, dynamic=False, backend=compile_backend())
        if not hasattr(layer, "_cf_checkpoint_before"):
            layer._cf_checkpoint_before = layer.gradient_checkpointing
        layer.gradient_checkpointing = False  # the class forward then runs the layer plainly
        layer._compiled_call_impl = None
        layer._cf_offload_fn = _COMPILED[cls] if compile else cls.forward
        layer.forward = types.MethodType(_offloaded_forward, layer)
    return len(layers)


def disable(model: torch.nn.Module) -> None:
    for layer in _layers(model):
        if hasattr(layer, "_cf_checkpoint_before"):
            layer.gradient_checkpointing = layer._cf_checkpoint_before
            del layer._cf_checkpoint_before, layer._cf_offload_fn
            del layer.forward  # back to the class forward


def enabled(model: torch.nn.Module) -> bool:
    return any(hasattr(m, "_cf_offload_fn") for m in _layers(model))
