"""Exact resume: SIGKILL a real training process after a checkpoint, rerun the same command, and the final
adapter equals an uninterrupted run's (same seed). Covers grad accumulation and epoch boundaries. Default tier
(issue 22 item 4): 6 optimizer steps, the kill lands mid-epoch 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from cardforge.core.config.compose import compose

# 24 samples, batch 4 -> 6 batches/epoch, accumulate 2 -> 3 optimizer steps/epoch; 6 steps cross into epoch 2
OVERRIDES = ["trainer.max_steps=6", "trainer.batch_size=4", "trainer.grad_accum=2", "trainer.ckpt_every_n_steps=2",
             "lora.r=8", "lora.lora_alpha=16", "trainer.lr=1e-3"]


def _ckpt_step(path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def test_sigkill_then_rerun_matches_uninterrupted(tiny_train_outputs, tmp_path, mlflow_uri, mlflow_experiment):
    from cardforge.train import stage

    common = OVERRIDES + [f"logger.experiment_name={mlflow_experiment}"]
    ref = stage.run(compose("train", common + [f"paths.outputs={tiny_train_outputs}"]))
    assert ref.steps == 6 and ref.resumed_from_step == 0

    killed_out = tmp_path / "killed"
    (killed_out / "data").mkdir(parents=True)
    (killed_out / "data" / "trajectories.jsonl").write_bytes((tiny_train_outputs / "data" / "trajectories.jsonl").read_bytes())
    cmd = [sys.executable, "-m", "cardforge.train", *common, f"paths.outputs={killed_out}"]
    cfg = compose("train", common + [f"paths.outputs={killed_out}"])
    ckpt = killed_out / "train" / "checkpoints" / stage.tracking.config_hash(cfg, stage.TRAIN_SECTIONS) / "last.ckpt"

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.time() + 300
    while _ckpt_step(ckpt) < 4:  # mid-epoch 2: the resume must restore the sampler position and the RNG
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 4 within 300 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_out / "train" / "adapter").exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    got = load_file(killed_out / "train" / "adapter" / "adapter_model.safetensors")
    want = load_file(tiny_train_outputs / "train" / "adapter" / "adapter_model.safetensors")
    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    # the whole loss curve survives the kill (LossHistory is part of the checkpoint)
    import json

    res = json.loads((killed_out / "train" / "train_result.json").read_text())
    assert res["resumed_from_step"] >= 4 and res["steps"] == 6
    torch.testing.assert_close(torch.tensor(res["losses"]), torch.tensor(ref.losses), rtol=1e-5, atol=1e-6)
    assert not ckpt.parent.exists()  # removed once the run finished
