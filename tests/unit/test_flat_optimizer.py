"""optim.FlatOptimizer: the inner optimizer steps a few flat buffers and the update equals stepping every tensor.

Run against torch AdamW (elementwise), a blockwise test double (per-256-block statistics, like bitsandbytes' 8-bit
state: a slot not starting on a block boundary would change the result) and, where bitsandbytes is installed (the
`gpu` extra; its CPU kernels run here), PagedAdamW8bit itself.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from cardforge.train.optim import FlatOptimizer, build_optimizer

# LoRA-like shapes: 8-bit sized (>= 4096) ones, one not a multiple of 256 (6500), small 32-bit-state ones whose
# flat buffer (6202 values) is above bitsandbytes' min_8bit_size, as on the 27B (96 tensors of 3072)
SHAPES = [(64, 512), (48, 64), (65, 100), (17, 3), (64, 80), (7,), (48, 64)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in SHAPES]


def _loss(params, step: int, micro: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * step + micro)
    xs = [torch.randn(p.shape, generator=g) for p in params]
    return sum(((p * x).sum() ** 2 * 1e-3 + (p ** 3 * x).mean()) for p, x in zip(params, xs))


def _train(params, opt, steps: int = 4, micro: int = 2, clip: float | None = None, sched=None) -> None:
    for step in range(steps):
        opt.zero_grad()
        for m in range(micro):  # gradient accumulation: autograd adds into .grad
            _loss(params, step, m).backward()
        if clip is not None:  # what Lightning's gradient clipping does: over the model's parameters
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()


class BlockwiseSign(torch.optim.Optimizer):
    """Test double with per-block state like bitsandbytes' 8-bit optimizers: each 256-element block of a tensor is
    normalised by its own absmax before the update, so a block spanning two tensors changes both."""

    def __init__(self, params, lr: float = 0.1, block: int = 256):
        super().__init__(params, {"lr": lr})
        self.block = block

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.reshape(-1)
                pad = (-g.numel()) % self.block
                blocks = torch.nn.functional.pad(g, (0, pad)).view(-1, self.block)
                norm = blocks / blocks.abs().amax(1, keepdim=True).clamp_min(1e-12)
                p.sub_(group["lr"] * norm.reshape(-1)[: g.numel()].view_as(p))


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: BlockwiseSign(ps),
], ids=["adamw", "blockwise-double"])
def test_flat_step_equals_the_per_tensor_step(make):
    ref, flat = _params(), _params()
    _train(ref, make(ref))
    opt = FlatOptimizer(flat, make)
    _train(flat, opt)
    for a, b in zip(ref, flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    # every slot starts on a 256-element block and small tensors (< 4096) sit in a bucket of their own
    assert len(opt.flat) == 2
    assert all(s.start % 256 == 0 for slots in opt.slots for _, s in slots)
    assert sorted(len(s) for s in opt.slots) == [3, 4]


def test_unaligned_slots_would_change_a_blockwise_update():
    """The alignment is what makes the blockwise case exact (the test above would fail with align=1)."""
    ref, flat = _params(), _params()
    _train(ref, BlockwiseSign(ref), steps=1, micro=1)
    _train(flat, FlatOptimizer(flat, BlockwiseSign, align=1), steps=1, micro=1)
    assert any(not torch.equal(a, b) for a, b in zip(ref, flat))


def test_gradients_are_views_clipping_and_the_lr_schedule_see_the_flat_buffers():
    ref, flat = _params(), _params()
    oa = torch.optim.AdamW(ref, lr=1e-2)
    ob = FlatOptimizer(flat, lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    sa = torch.optim.lr_scheduler.LambdaLR(oa, lambda s: 1.0 / (s + 1))
    sb = torch.optim.lr_scheduler.LambdaLR(ob, lambda s: 1.0 / (s + 1))
    _train(ref, oa, clip=0.5, sched=sa)
    _train(flat, ob, clip=0.5, sched=sb)
    for a, b in zip(ref, flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert ob.param_groups[0]["lr"] == oa.param_groups[0]["lr"] == pytest.approx(1e-2 / 5)
    # after zero_grad the parameters' gradients are zeroed views of the flat gradient (autograd adds in place)
    ob.zero_grad(set_to_none=True)
    for grad, slots in zip(ob._grads, ob.slots):
        for p, s in slots:
            assert p.grad.data_ptr() == grad[s].data_ptr() and not p.grad.any()


def test_clipping_over_the_optimizers_param_groups_clips_every_tensor():
    """Lightning clips `optimizer.param_groups`' parameters (here the flat buffers): from the first step on, the same
    as clipping the model's tensors."""
    ref, flat = _params(), _params()
    oa = torch.optim.AdamW(ref, lr=1e-2)
    ob = FlatOptimizer(flat, lambda ps: torch.optim.AdamW(ps, lr=1e-2))
    for step in range(2):
        for ps, o in ((ref, oa), (flat, ob)):
            o.zero_grad()
            _loss(ps, step).backward()
            norm = torch.nn.utils.clip_grad_norm_([p for g in o.param_groups for p in g["params"]], 0.1)
            assert norm > 0.1
            o.step()
        for a, b in zip(ref, flat):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def _step_without_one_gradient(pairs, i: int, step: int, regrad: bool = False) -> None:
    """One step of each (params, optimizer) pair with parameter `i`'s gradient removed: its value must not move.
    `regrad`: every other `.grad` replaced by a copy first (as after model.zero_grad(set_to_none=True))."""
    for ps, o in pairs:
        o.zero_grad()
        _loss(ps, step).backward()
        if regrad:
            for p in ps:
                p.grad = p.grad.clone()
        ps[i].grad = None
        before = ps[i].detach().clone()
        o.step()
        assert torch.equal(ps[i], before)


def test_a_gradient_set_from_outside_and_a_missing_one():
    """A `.grad` replaced by another tensor is copied in; a parameter without a gradient is not written back."""
    ref, flat = _params(), _params()
    oa = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1)
    ob = FlatOptimizer(flat, lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1))
    _step_without_one_gradient(((ref, oa), (flat, ob)), 2, step=0, regrad=True)
    for a, b in zip(ref, flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_state_dict_round_trip_resumes_the_same_run():
    def make(ps):
        return torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)

    ref = _params()
    _train(ref, FlatOptimizer(ref, make), steps=4)
    first = _params()
    o1 = FlatOptimizer(first, make)
    _train(first, o1, steps=2)
    saved = {"state": o1.state_dict(), "params": [p.detach().clone() for p in first]}
    resumed = _params(seed=7)  # a fresh process: other initial values, then the checkpoint's
    with torch.no_grad():
        for p, v in zip(resumed, saved["params"]):
            p.copy_(v)
    o2 = FlatOptimizer(resumed, make)
    o2.load_state_dict(saved["state"])
    for step in range(2, 4):
        o2.zero_grad()
        for m in range(2):
            _loss(resumed, step, m).backward()
        o2.step()
    for a, b in zip(ref, resumed):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_build_optimizer_flattens_unless_told_not_to():
    ps = _params()
    opt, name = build_optimizer(ps, "adamw", 1e-3, 0.0, on_cuda=False)
    assert isinstance(opt, FlatOptimizer) and isinstance(opt.inner, torch.optim.AdamW) and name == "adamw"
    opt, _ = build_optimizer(_params(), "adamw", 1e-3, 0.0, on_cuda=False, flat=False)
    assert type(opt) is torch.optim.AdamW


def test_bitsandbytes_8bit_state_flat_equals_per_tensor():
    pytest.importorskip("bitsandbytes")
    from cardforge.train.optim import paged_adamw_8bit

    make, make_small = paged_adamw_8bit(1e-2, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "paged optimizers are not supported on CPU"
        ref, flat = _params(), _params()
        _train(ref, make(ref), steps=3)
        opt = FlatOptimizer(flat, make, make_small=make_small)
        _train(flat, opt, steps=3)
        # what a flat buffer of the small tensors would get from the 8-bit optimizer: 8-bit state, another update
        wrong = _params()
        _train(wrong, FlatOptimizer(wrong, make), steps=3)
    for a, b in zip(ref, flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    small = [i for i, s in enumerate(SHAPES) if math.prod(s) < 4096]
    assert any(not torch.equal(ref[i], wrong[i]) for i in small)
    # 8-bit state for the large tensors' buffer, 32-bit for the small ones' (as bitsandbytes gives each tensor)
    dtypes = sorted((f.numel() >= 4096 and len(slots) == 3, str(opt.state[f]["state1"].dtype))
                    for f, slots in zip(opt.flat, opt.slots))
    assert [d for _, d in dtypes] == ["torch.float32", "torch.uint8"], dtypes


def test_state_maps_every_flat_buffer_to_its_inner_optimizer():
    opt = FlatOptimizer(_params(), lambda ps: torch.optim.AdamW(ps, lr=1e-2),
                        make_small=lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9))
    assert [type(o).__name__ for o in opt.inners] == ["AdamW", "SGD"] and len(opt.param_groups) == 2
    ps = [p for _, slots in zip(opt.flat, opt.slots) for p, _ in slots]
    _train(ps, opt, steps=1)
    assert len(opt.state) == 2 and {type(k) for k in opt.state} == {torch.nn.Parameter}
    for f in opt.flat:  # what Lightning does at teardown: move every state tensor, writing back by key
        opt.state[f] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[f].items()}
    assert "exp_avg" in opt.inners[0].state[opt.flat[0]] or "exp_avg" in opt.inners[0].state[opt.flat[1]]
    assert all(len(o.state) == 1 for o in opt.inners)
    with pytest.raises(ValueError, match="trainer.flat_optimizer"):
        opt.load_state_dict(torch.optim.AdamW(_params(), lr=1e-2).state_dict())


def test_parameters_view_their_slots_and_the_model_holds_no_second_copy():
    ps = _params()
    values = [p.detach().clone() for p in ps]
    opt = FlatOptimizer(ps, lambda q: torch.optim.AdamW(q, lr=1e-2))
    flat_storages = {f.untyped_storage().data_ptr() for f in opt.flat}
    assert {p.untyped_storage().data_ptr() for p in ps} <= flat_storages  # every value lives in a flat buffer
    assert all(torch.equal(p, v) for p, v in zip(ps, values)) and all(type(p) is torch.nn.Parameter for p in ps)
    # an update written by the inner optimizer into the flat buffer is the parameter's value, with no copy back
    with torch.no_grad():
        opt.flat[0].add_(1.0)
    moved = [p for p in ps if p.untyped_storage().data_ptr() == opt.flat[0].untyped_storage().data_ptr()]
    assert moved and all(torch.equal(p, v + 1) for p, v in zip(ps, values) if any(p is m for m in moved))
    # without share: separate tensors, copied in and out (the first implementation)
    qs = _params()
    opt2 = FlatOptimizer(qs, lambda q: torch.optim.AdamW(q, lr=1e-2), share=False)
    assert not {q.untyped_storage().data_ptr() for q in qs} & {f.untyped_storage().data_ptr() for f in opt2.flat}


@pytest.mark.parametrize("share", [True, False])
def test_a_parameter_given_new_data_or_no_gradient_after_momentum(share):
    """`p.data = ...` after the optimizer was built (e.g. load_state_dict(assign=True)): that parameter is copied in
    and out from then on; a parameter without a gradient keeps its value though its slot has momentum."""
    def make(q):
        return torch.optim.AdamW(q, lr=1e-2, weight_decay=0.1)

    ref, flat = _params(), _params()
    oa, ob = make(ref), FlatOptimizer(flat, make, share=share)
    _train(ref, oa, steps=2)
    _train(flat, ob, steps=2)
    with torch.no_grad():
        for ps in (ref, flat):
            ps[1].data = ps[1].detach().clone() * 0.5  # a fresh tensor, no longer the slot's view
    _train(ref, oa, steps=2)
    _train(flat, ob, steps=2)
    for a, b in zip(ref, flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    # (last: from here the slot's state has seen a zero gradient where torch's AdamW skips the tensor)
    _step_without_one_gradient(((ref, oa), (flat, ob)), 3, step=5)
    for a, b in zip(ref, flat):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("strategy, views", [("auto", True), ("ddp", True), ("fsdp1", False)])
def test_the_stage_shares_the_buffers_except_under_fsdp1(strategy, views):
    """FSDP1 (use_orig_params) re-points each parameter's data at its own flat parameter at every forward: there
    the parameters keep their own tensors (copied in and out), elsewhere they view the optimizer's buffers."""
    from omegaconf import OmegaConf

    from cardforge.train.module import DistillModule

    model = torch.nn.Linear(64, 80)
    tcfg = OmegaConf.create({"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "cosine",
                             "warmup_ratio": 0.0, "kernels": "cardforge", "flat_optimizer": True,
                             "strategy": strategy})
    opt = DistillModule(model, tcfg, total_steps=4).configure_optimizers()["optimizer"]
    assert isinstance(opt, FlatOptimizer)
    shared = {p.untyped_storage().data_ptr() for p in model.parameters()} <= {
        f.untyped_storage().data_ptr() for f in opt.flat}
    assert shared is views
