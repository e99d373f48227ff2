"""A train checkpoint is resumed only over the samples it was trained on.

The checkpoint folder is named by the config alone (<outputs>/train/checkpoints/<config hash>/). Before, a train run
killed mid-way, then the data stage re-run with the same config (more samples accepted after a teacher outage:
data.retry_errors), then train again: "resuming from step N" over the NEW samples, the sampler skipping N batches of
a permutation of another dataset. Now every published checkpoint is stamped with the samples' key and a resume with
other samples (or an unstamped checkpoint) trains afresh."""

from __future__ import annotations

import types
from pathlib import Path

import torch

from cardforge.train.callbacks import AtomicLastCheckpoint
from cardforge.train.data import Sample
from cardforge.train.stage import resume_point, samples_key


def _checkpoint(dirpath: Path, data_key: str | None) -> AtomicLastCheckpoint:
    ckpt = AtomicLastCheckpoint(dirpath, 2, data_key=data_key)
    dirpath.mkdir(parents=True, exist_ok=True)
    tmp = dirpath / ".last.ckpt.4.tmp"
    torch.save({"global_step": 4}, tmp)
    ckpt._publish(tmp)  # what rank 0 does after trainer.save_checkpoint
    return ckpt


def test_a_checkpoint_resumes_only_over_the_samples_it_was_trained_on(tmp_path):
    old = [Sample([1, 2, 3], [0, 1, 1]), Sample([4, 5], [0, 1])]
    new = old + [Sample([6, 7], [0, 1])]  # the data stage accepted one more sample since
    ckpt = _checkpoint(tmp_path / "ckpts", samples_key(old))
    assert ckpt.data_key_path.read_text().strip() == samples_key(old)

    assert resume_point(ckpt, samples_key(old)) == (ckpt.last_path, 4)
    assert resume_point(ckpt, samples_key(new)) == (None, 0)

    unstamped = _checkpoint(tmp_path / "legacy", None)  # written before stamps: not trusted
    assert resume_point(unstamped, samples_key(old)) == (None, 0)


def test_samples_key_sees_ids_masks_and_order():
    a, b = Sample([1, 2, 3], [0, 1, 1]), Sample([1, 2, 3], [0, 0, 1])
    keys = {samples_key(x) for x in ([a], [b], [a, b], [b, a], [Sample([1, 2], [0, 1]), Sample([3], [1])])}
    assert len(keys) == 5 and samples_key([a, b]) == samples_key([Sample([1, 2, 3], [0, 1, 1]), b])
