"""FSDP2 on CPU (gloo, 2 ranks): each rank loads only its shards of a 3.9 GB random bf16 checkpoint
(distributed.CHECK_ARCH), keeps the base in bf16 (LoRA fp32, no fp32 copy of the base) and trains two LoRA steps.
Issue 21 item 1: each rank's peak RSS over the whole run (load and steps) <= 0.6 x the checkpoint + a stated
constant, C = RUNTIME_GIB + the working set of two all-gathered units (`gathered`, fixed by the layer width, not by
the checkpoint's size); a rank holding the whole base would exceed it. The weight part of
cardforge.pipeline.fsdp_memory (what `make plan` prints per GPU) is checked here."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

GIB = 2**30
RUNTIME_GIB = 1.0  # the stated constant: python + torch + transformers + PEFT + gloo + the meta model (0.40 GiB seen)


@pytest.fixture(scope="module")
def check_ckpt(tmp_path_factory):
    from cardforge.train import distributed

    return distributed.random_checkpoint(tmp_path_factory.mktemp("fsdp2") / "ckpt", distributed.CHECK_ARCH)


@pytest.fixture(scope="module")
def fsdp2_run(check_ckpt):
    from safetensors import safe_open

    from cardforge.pipeline import fsdp_memory

    ckpt, tmp = check_ckpt, check_ckpt.parent
    files = sorted(ckpt.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    tensors = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            tensors.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    out = tmp / "ranks"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "cardforge.train.distributed", "--model", str(ckpt), "--out", str(out),
                           "--steps", "2", "--seq", "64", "--checkpointing"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    expect = fsdp_memory.rank_weight_bytes(tensors, 2)
    print(json.dumps({"checkpoint_bytes": size, "formula": expect, "ranks": ranks}))
    return size, tensors, expect, ranks


@pytest.mark.slow
def test_fsdp2_rank_loads_and_holds_only_its_shards(fsdp2_run):
    size, tensors, expect, ranks = fsdp2_run
    assert size > 3.5e9  # "several GB"
    base_elems = sum(math.prod(s) for s in tensors.values())
    for r in ranks:
        # only this rank's rows were read, and they are all it holds of the base: bf16, half of every tensor
        assert r["tensors"] == len(tensors)
        assert r["read_bytes"] <= expect["sharded"]
        assert r["dtypes"]["frozen:bfloat16"] * 2 <= expect["sharded"]
        assert set(r["dtypes"]) == {"frozen:bfloat16", "trainable:float32"}  # no fp32 copy of the base
        # per-rank peak RSS: loading adds at most 0.6 x the checkpoint to what the rank held before any weight
        assert r["rss_load"] - r["rss_built"] <= 0.6 * size, r
        assert r["rss_load"] <= 0.6 * size + RUNTIME_GIB * GIB, r
        # the LoRA steps train: finite cross-entropy near ln(32000) = 10.4 on random weights
        assert all(8 < loss < 13 for loss in r["losses"]), r["losses"]
    assert sum(r["dtypes"]["frozen:bfloat16"] for r in ranks) == base_elems
    assert sum(r["read_bytes"] for r in ranks) == 2 * base_elems


@pytest.mark.slow
def test_fsdp2_training_step_adds_only_the_working_set(fsdp2_run):
    size, _, expect, ranks = fsdp2_run
    bound = 0.6 * size + expect["gathered"] + RUNTIME_GIB * GIB  # 0.6 x checkpoint + C
    for r in ranks:
        # the bound can fail: the runtime plus the whole base on one rank would exceed it
        assert r["rss_built"] + size > bound, (r["rss_built"], size, bound)
        # two LoRA steps add the working set (two gathered units) and the step's own small state, never another
        # copy of the base; needs freed gathered weights returned to the OS (distributed.bounded_malloc: without
        # it glibc kept them, +1.6 GiB per rank over the forward)
        assert r["bounded_malloc"] is True
        # rss_step is ru_maxrss at the end: the rank's peak over the whole run (load, forward, backward, AdamW)
        assert r["rss_step"] >= r["rss_load"] and r["rss_step"] <= bound, r


def _peak_rss(marker: str, proc: subprocess.Popen) -> dict[int, int]:
    """VmHWM (peak RSS, bytes) of every process whose command line holds `marker`, polled until `proc` ends."""
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if marker.encode() not in (d / "cmdline").read_bytes():
                    continue
                hwm = next(line for line in (d / "status").read_text().splitlines() if line.startswith("VmHWM:"))
            except (OSError, StopIteration):
                continue
            peaks[int(d.name)] = max(peaks.get(int(d.name), 0), int(hwm.split()[1]) * 1024)
        time.sleep(0.5)
    return peaks


@pytest.mark.slow
def test_train_stage_ranks_stay_within_the_bound(check_ckpt, tiny_model_dir, tmp_path):
    """The same bound for the train stage itself (`python -m cardforge.train trainer=fsdp`, Lightning starting rank 1,
    cardforge's kernels, per-layer checkpointing, MLflow on rank 0), one LoRA step on the same checkpoint. Without
    the stage fixing glibc's mmap threshold (fsdp2.FSDP2Strategy) its ranks peaked at 5.1 and 6.2 GB."""
    from cardforge.pipeline import fsdp_memory
    from cardforge.train import distributed, scaling

    model = tmp_path / "model"  # the checkpoint + a tokenizer (the samples are pre-tokenized, ids < 32000)
    model.mkdir()
    for f in check_ckpt.iterdir():
        (model / f.name).symlink_to(f)
    for name in scaling.TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy2(tiny_model_dir / name, model / name)
    samples = scaling.write_samples(tmp_path / "samples.jsonl", 4, 64, distributed.CHECK_ARCH["vocab_size"])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cardforge.train", f"paths.outputs={out}", "model.embedded=false",
           f"model.path={model}", "model.name=rss-check", "trainer=fsdp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", "trainer.max_steps=1", "trainer.batch_size=1",
           "trainer.grad_accum=1", "trainer.ckpt_every_n_steps=100000", "data.max_seq_len=64",
           f"trainer.data_file={samples}", "lora.r=8", "logger.experiment_name=fsdp2-rss",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    import threading

    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    peaks = _peak_rss(f"paths.outputs={out}", proc)
    reader.join(timeout=60)
    text = "".join(log)
    assert proc.returncode == 0, text[-4000:]
    size = sum(f.stat().st_size for f in check_ckpt.glob("*.safetensors"))
    tensors = {}
    from safetensors import safe_open

    for f in sorted(check_ckpt.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            tensors.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    expect = fsdp_memory.rank_weight_bytes(tensors, 2)
    bound = 0.6 * size + expect["gathered"] + RUNTIME_GIB * GIB
    print(json.dumps({"checkpoint_bytes": size, "bound": bound, "stage_rank_peaks": sorted(peaks.values())}))
    assert text.count("glibc mmap threshold fixed at 1 MiB: True") == 2, text[-4000:]
    assert text.count(f"of this rank's shards read from {model}") == 2
    assert len(peaks) == 2, peaks  # rank 0 and the rank Lightning started
    assert all(p <= bound for p in peaks.values()), (peaks, bound)
    assert "rank 0 wrote the adapter" in text
