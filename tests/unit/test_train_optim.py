"""Optimizer choice (paged AdamW 8-bit falls back on CPU, logged) and the warmup + cosine schedule."""

from __future__ import annotations

import logging
import math

import torch

from cardforge.train.optim import build_optimizer, lr_lambda, warmup_steps


def test_paged_adamw_8bit_falls_back_to_adamw_on_cpu(caplog):
    p = torch.nn.Parameter(torch.zeros(3))
    with caplog.at_level(logging.WARNING, logger="cardforge.train.optim"):
        opt, name = build_optimizer([p], "paged_adamw_8bit", 1e-3, 0.0, on_cuda=False)
    assert isinstance(getattr(opt, "inner", opt), torch.optim.AdamW) and name == "adamw"
    assert "paged_adamw_8bit needs CUDA; falling back to torch AdamW" in caplog.text


def test_cosine_with_warmup_ratio():
    total = 100
    w = warmup_steps(total, 0.03)
    fn = lr_lambda("cosine", total, w)
    assert w == 3
    assert [round(fn(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(fn(50), 0.5 * (1 + math.cos(math.pi * 47 / 97)))
    assert fn(total) == 0.0 and all(fn(s) >= fn(s + 1) for s in range(3, total))
    assert lr_lambda("constant", total, 0)(50) == 1.0
