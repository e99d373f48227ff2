"""The LR schedule's length counts what the loader draws: packed rows with trainer.pack_length, not samples.

Before the fix train() passed len(samples) to build_module, so with packing (several samples per row) the
cosine/linear schedule was planned for N samples' worth of steps while the run took N/rows-per-sample: the LR
never decayed past the first part of its curve and the warmup ran several times too long."""

from __future__ import annotations

import types

import pytest
from omegaconf import OmegaConf

from cardforge.train import stage
from cardforge.train.data import Sample


class _Stop(Exception):
    pass


def test_train_plans_the_schedule_over_packed_rows(monkeypatch, tmp_path):
    samples = [Sample([1, 2, 3, 4], [0, 1, 1, 1]) for _ in range(12)]  # 12 samples of 4 tokens
    cfg = OmegaConf.create({"trainer": {"seed": 0, "batch_size": 1, "pack_length": 16, "grad_accum": 1,
                                        "max_steps": -1, "max_epochs": 1}})
    tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=0)
    student = types.SimpleNamespace(pad_multiple=1, base=None, model=None, matched={}, fsdp2=False)
    seen = {}

    def fake_build_module(cfg_, student_, path_, trainer_, n_items):
        seen["n_items"] = n_items
        raise _Stop

    monkeypatch.setattr(stage, "model_path", lambda cfg_: tmp_path)
    monkeypatch.setattr(stage, "load_training_data", lambda cfg_, path_, sp: (tok, samples, None))
    monkeypatch.setattr(stage, "build_student", lambda cfg_, path_: student)
    monkeypatch.setattr(stage, "build_strategy", lambda tc, base: "auto")
    monkeypatch.setattr(stage, "build_trainer", lambda cfg_, s, out, rid: (types.SimpleNamespace(world_size=1),
                                                                           None, None))
    monkeypatch.setattr(stage, "build_module", fake_build_module)
    with pytest.raises(_Stop):
        stage.train(cfg, tmp_path / "samples.jsonl", tmp_path / "out")
    assert seen["n_items"] == 3  # 12 samples of 4 tokens in rows of 16: 3 rows, 3 optimizer steps per epoch
