"""The plan's disk check measures the filesystem paths.outputs is on, not "/" (before: `shutil.disk_usage(
Outputs(cfg).root.anchor)`, the anchor of an absolute path being "/", so a chain writing to a data disk mounted at
/data was judged by the root filesystem's free space: refused on a full root, or passed on a small /data)."""

from __future__ import annotations

import shutil
from collections import namedtuple

from cardforge.core.config.compose import compose
from cardforge.pipeline import plan


def test_disk_check_measures_the_outputs_filesystem(monkeypatch, tmp_path):
    outputs = tmp_path / "data-disk" / "outputs"  # not created yet: its nearest existing parent is measured
    (tmp_path / "data-disk").mkdir()
    cfg = compose("pipeline", ["experiment=qwen36_27b_card", f"paths.outputs={outputs}"])
    asked = []
    usage = namedtuple("usage", "total used free")

    def disk_usage(path):
        asked.append(str(path))
        return usage(10**15, 0, 10**15 if str(path).startswith(str(tmp_path)) else 0)  # "/" is full, the disk not

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    lines = plan.problems(cfg)
    assert asked == [str(tmp_path / "data-disk")], asked
    assert not any(line.startswith("disk:") for line in lines), lines
