"""FSDP2 on CPU (gloo): the loss and the LoRA gradients of a global batch split over 2 ranks equal the 1-rank run's
(bf16 compute both ways, fp32 gradient reduction; issue 21 item 2, without compiled layers yet)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(model, out, world: int):
    from safetensors import safe_open

    grads = out / f"grads-{world}.safetensors"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(world), "-m", "cardforge.train.distributed", "--model", str(model), "--out",
                           str(out / f"w{world}"), "--grads", str(grads), "--seq", "64"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with safe_open(str(grads), framework="pt") as f:
        return float(f.metadata()["loss"]), {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.slow
def test_two_ranks_match_one_rank(tmp_path):
    from cardforge.train import bench, distributed

    model = distributed.random_checkpoint(tmp_path / "tiny", dict(bench.ARCHS["tiny"], num_hidden_layers=4))
    loss1, g1 = _run(model, tmp_path, 1)
    loss2, g2 = _run(model, tmp_path, 2)
    assert abs(loss1 - loss2) <= 1e-5 * abs(loss1)
    assert sorted(g1) == sorted(g2) and len(g1) == 32  # A and B of 16 LoRA modules
    for name, a in g1.items():
        b = g2[name]
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-2 * a.abs().max() + 1e-12, name  # bf16 compute: ~0.5% seen
    # B starts at zero, so only B gets a gradient on the first step; every module's B does (no dead path)
    assert all(g1[n].abs().sum() > 0 for n in g1 if "lora_B" in n)
    assert all(g1[n].abs().sum() == 0 for n in g1 if "lora_A" in n)
