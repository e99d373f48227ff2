"""Optimizer and LR schedule from `cfg.trainer`.

paged_adamw_8bit (bitsandbytes) needs CUDA; anywhere else we fall back to torch AdamW and say so once in the
log and in the returned name (the stage records it as the MLflow tag `train.optimizer`). With `flat=True`
(`trainer.flat_optimizer`, the default) bitsandbytes steps a few flat buffers instead of every LoRA tensor
(`FlatOptimizer`): the same update, two kernel launches instead of ~1000, each followed by a device sync.
"""

from __future__ import annotations

import logging
import math
from collections.abc import MutableMapping
from typing import Iterable

import torch

log = logging.getLogger(__name__)


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float,
                    on_cuda: bool, flat: bool = True, share: bool = True) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, the name of what actually runs); `flat`: stepped through `FlatOptimizer` (same update; not for
    FSDP2's sharded DTensor parameters); `share`: its parameters become views of the flat buffers (off where
    another owner sets `param.data`, e.g. FSDP1's original-parameter views)."""
    params = [p for p in params if p.requires_grad]

    def adamw(ps):
        return torch.optim.AdamW(ps, lr=lr, weight_decay=weight_decay)

    make, used = adamw, "adamw"
    make_small = None
    from torch.distributed.tensor import DTensor

    sharded = any(isinstance(p, DTensor) for p in params)
    if name == "paged_adamw_8bit":
        if sharded:
            # FSDP2 shards the LoRA tensors as DTensors, which bitsandbytes' kernels do not take; the fp32 LoRA
            # state is ~1% of the base, so 8-bit states would save little
            log.warning("trainer.optimizer=paged_adamw_8bit: FSDP2's sharded (DTensor) parameters; using torch AdamW")
        elif on_cuda:
            try:
                import bitsandbytes as bnb

                make, make_small = paged_adamw_8bit(lr, weight_decay)
                used = "paged_adamw_8bit"
            except ImportError:
                log.warning("trainer.optimizer=paged_adamw_8bit: bitsandbytes is not installed "
                            "(pip install 'cardforge-train[gpu]'); falling back to torch AdamW")
        else:
            log.warning("trainer.optimizer=paged_adamw_8bit needs CUDA; falling back to torch AdamW on this device")
    elif name != "adamw":
        raise ValueError(f"trainer.optimizer: unknown optimizer {name!r}")
    if flat and not sharded and params:
        return FlatOptimizer(params, make, make_small=make_small, share=share), used
    return make(params), used


def paged_adamw_8bit(lr: float, weight_decay: float):
    """(make, make_small) for `FlatOptimizer`: bitsandbytes' PagedAdamW8bit, and for the buffer of tensors below its
    min_8bit_size (4096), which it keeps in 32-bit state, the same update in its 32-bit form (PagedAdamW): that
    buffer is larger than 4096, so PagedAdamW8bit would give it 8-bit state."""
    import bitsandbytes as bnb

    def make(ps):
        return bnb.optim.PagedAdamW8bit(ps, lr=lr, weight_decay=weight_decay)

    def make_small(ps):
        return bnb.optim.PagedAdamW(ps, lr=lr, weight_decay=weight_decay)

    return make, make_small


class FlatOptimizer(torch.optim.Optimizer):
    """An optimizer stepping a few flat buffers that hold every parameter, each in a slot of its own.

    bitsandbytes' 8-bit optimizers update one tensor per kernel launch and synchronise the device after each
    (`bitsandbytes.optim.Optimizer8bit.step`): with ~1000 LoRA tensors on the 27B that is ~1000 launches and syncs
    per step, the GPU idle between them. Here the inner optimizer sees one flat parameter per (device, dtype,
    numel < `small`) bucket, so a step is one launch per bucket. The update is the same: each slot starts at a
    multiple of `align` (bitsandbytes' 256-element quantisation blocks, so no block spans two tensors; the padding
    stays zero: zero gradient, zero state, zero update), and tensors below `small` (4096: bitsandbytes'
    `min_8bit_size`, kept in 32-bit state) are bucketed apart and stepped by `make_small(flat_params)` (default
    `make`): their buffer is larger than `small`, so bitsandbytes' 8-bit optimizer would give it 8-bit state;
    `make_small` is its 32-bit form. `make(flat_params)` steps the other buckets.

    Gradients: each parameter's `.grad` is a view of its slot in the bucket's flat gradient, so autograd
    accumulates into place, gradient norms and clipping over the model's parameters see the same numbers, and
    `zero_grad` zeroes the buffers (the views stay). A `.grad` that is not the view (set by someone else) is
    copied in at `step`.

    Values: with `share` (the default) each parameter's data becomes a view of its slot (`p.data = slot`), so the
    inner optimizer updates the parameters in place and the model holds no second copy of them (1.9 GiB of fp32 LoRA
    values on the 27B); the parameters stay separate `nn.Parameter` objects (names, `requires_grad`, module
    attributes unchanged), but their tensors share one storage: whoever serialises them one by one should copy each
    (torch.save of one view writes the whole buffer), as `stage.save_adapter` does. A parameter whose data is
    replaced later (`p.data = ...`, `load_state_dict(assign=True)`) no longer views its slot: it is then copied in
    before each step and out after it, as every parameter is with `share=False`. A parameter without a gradient at a
    step (autograd never reached it) keeps its value, but its slot's optimizer state sees a zero gradient
    (bitsandbytes would skip the tensor): the one difference, and none for LoRA, where every tensor gets a gradient."""

    def __init__(self, params: Iterable[torch.nn.Parameter], make, align: int = 256, small: int = 4096,
                 make_small=None, share: bool = True):
        self.params = [p for p in params if p.requires_grad]
        buckets: dict[tuple, list[torch.nn.Parameter]] = {}
        for p in self.params:
            buckets.setdefault((p.device, p.dtype, p.numel() < small), []).append(p)
        self.flat: list[torch.nn.Parameter] = []
        self.slots: list[list[tuple[torch.nn.Parameter, slice]]] = []
        is_small = []
        for (device, dtype, below), ps in buckets.items():
            is_small.append(below)
            slots, off = [], 0
            for p in ps:
                slots.append((p, slice(off, off + p.numel())))
                off += -(-p.numel() // align) * align
            self.flat.append(torch.nn.Parameter(torch.zeros(off, dtype=dtype, device=device)))
            self.slots.append(slots)
        self._grads = [torch.zeros_like(f) for f in self.flat]  # the flat gradients; `.grad` of each parameter views
        for f, g in zip(self.flat, self._grads):  # from the start: clipping over `param_groups` (Lightning) sees them
            f.grad = g
        self._gviews = [[g[s].view_as(p) for p, s in slots] for g, slots in zip(self._grads, self.slots)]
        # each parameter's slot in its flat buffer, made once (the step copies through them both ways)
        self._pviews = [[f.detach()[s].view_as(p) for p, s in slots] for f, slots in zip(self.flat, self.slots)]
        self.inner = None
        super().__init__(self.flat, {})
        self._gather_params()
        if share:
            with torch.no_grad():
                for views, slots in zip(self._pviews, self.slots):
                    for v, (p, _) in zip(views, slots):
                        p.data = v  # the parameter's own storage is freed once nothing else holds it
        big = [f for f, b in zip(self.flat, is_small) if not b]
        little = [f for f, b in zip(self.flat, is_small) if b]
        # `inner` steps the large tensors' buffers (or the small ones' when there are no large ones)
        self.inners = ([make(big)] if big else []) + ([(make_small or make)(little)] if little else [])
        self.inner = self.inners[0]
        self.defaults = self.inner.defaults
        self._share_inner()
        self._point_grads()

    def _share_inner(self) -> None:
        # the LR scheduler and Lightning read and write `param_groups` (the same dicts the inner optimizers step
        # with) and `state` (each key routed to the inner optimizer that holds it)
        self.param_groups = [g for o in self.inners for g in o.param_groups]
        self.state = _RoutedState(self.inners)

    @torch.no_grad()
    def _gather_params(self) -> list[set[int]]:
        """Copy into the flat buffers the parameters that do not view their slot; (per bucket) their indices."""
        apart = []
        for views, slots in zip(self._pviews, self.slots):
            idx = [i for i, (v, (p, _)) in enumerate(zip(views, slots)) if p.data_ptr() != v.data_ptr()]
            if idx:
                torch._foreach_copy_([views[i] for i in idx], [slots[i][0].detach() for i in idx])
            apart.append(set(idx))
        return apart

    def _point_grads(self) -> None:
        for views, slots in zip(self._gviews, self.slots):
            for v, (p, _) in zip(views, slots):
                if p.grad is not v:
                    p.grad = v

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped = []  # per bucket: the slots whose parameter had a gradient
        for flat, grad, views, slots in zip(self.flat, self._grads, self._gviews, self.slots):
            got = set()
            for i, (v, (p, _)) in enumerate(zip(views, slots)):
                if p.grad is None:  # autograd never reached it (or someone set it to None): zero, value kept
                    v.zero_()
                    continue
                if p.grad is not v:  # a gradient autograd did not accumulate into the view
                    v.copy_(p.grad)
                got.add(i)
            flat.grad = grad if got else None  # a bucket without gradients: the inner optimizer skips it
            stepped.append(got)
        apart = self._gather_params()
        # a parameter viewing its slot and without a gradient: the step would still move it (momentum, decay)
        kept = [[(i, views[i].clone()) for i in range(len(views)) if i not in got and i not in out]
                for views, got, out in zip(self._pviews, stepped, apart)]
        for o in self.inners:
            o.step()
        for flat, grad, views, slots, got, out, keep in zip(self.flat, self._grads, self._pviews, self.slots,
                                                             stepped, apart, kept):
            flat.grad = grad
            back = sorted(got & out)  # copied in, stepped: copied back out
            if back:
                torch._foreach_copy_([slots[i][0].detach() for i in back], [views[i] for i in back])
            for i, value in keep:
                views[i].copy_(value)
        self._point_grads()
        return loss

    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradients; the parameters' `.grad` stay views of them (whatever `set_to_none`)."""
        for g in self._grads:
            g.zero_()
        self._point_grads()

    def state_dict(self):
        return {"flat_inner": [o.state_dict() for o in self.inners]}

    def load_state_dict(self, state_dict) -> None:
        inner = state_dict.get("flat_inner")
        if not isinstance(inner, list) or len(inner) != len(self.inners):
            raise ValueError("optimizer state: not a FlatOptimizer state of the same buckets (was it saved with "
                             "trainer.flat_optimizer=false? resume with the setting it was saved with)")
        for o, sd in zip(self.inners, inner):
            o.load_state_dict(sd)
        self._share_inner()

    def add_param_group(self, param_group) -> None:
        if self.inner is None:  # torch.optim.Optimizer.__init__ registering the flat buffers
            return super().add_param_group(param_group)
        raise NotImplementedError("FlatOptimizer: build a new optimizer to add parameters")

    def __repr__(self) -> str:
        n = sum(len(s) for s in self.slots)
        return f"FlatOptimizer({n} tensors in {len(self.flat)} flat buffers, {', '.join(map(repr, self.inners))})"


class _RoutedState(MutableMapping):
    """The inner optimizers' `state` as one mapping: each parameter's entry read and written where it lives."""

    def __init__(self, inners):
        self.inners = inners

    def _owner(self, key):
        for o in self.inners:
            if any(key is p for g in o.param_groups for p in g["params"]):
                return o
        raise KeyError(key)

    def __getitem__(self, key):
        return self._owner(key).state[key]

    def __setitem__(self, key, value) -> None:
        self._owner(key).state[key] = value

    def __delitem__(self, key) -> None:
        del self._owner(key).state[key]

    def __iter__(self):
        for o in self.inners:
            yield from list(o.state)

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.inners)


def lr_lambda(kind: str, total_steps: int, warmup_steps: int):
    """Multiplier on the base LR at optimizer step `s`: linear warmup, then cosine / linear to 0 or constant."""

    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear

    return fn


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio) if warmup_ratio > 0 else 0
