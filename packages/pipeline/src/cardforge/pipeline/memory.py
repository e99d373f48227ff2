"""Peak resident memory of one pipeline stage: this process and every process it started.

Two views, the larger is the stage's `peak_rss_gib`:
- getrusage: RUSAGE_SELF's ru_maxrss after resetting this process's high-water mark (/proc/self/clear_refs,
  Linux >= 4.0) when the stage starts, so it is this stage's own peak, not an earlier stage's; RUSAGE_CHILDREN's
  ru_maxrss is the largest child waited for so far, so it counts for this stage only where it grew during it.
- a sampler thread that sums the RSS of this process and its live descendants (llama-server beside the Python
  client) twice a second: what they held together, which getrusage never reports.
"""

from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
GIB = 2**30


@dataclass
class Peak:
    self_gib: float  # this process during the stage (since its reset; else since it started)
    children_gib: float | None  # the largest child that ended during the stage, if it beat every earlier one
    tree_gib: float  # this process + live descendants together, sampled
    self_reset: bool  # the high-water mark was reset at the stage's start

    @property
    def gib(self) -> float:
        return max(self.self_gib, self.children_gib or 0.0, self.tree_gib)

    def metrics(self, stage: str) -> dict[str, float]:
        out = {f"{stage}.peak_rss_gib": round(self.gib, 4), f"{stage}.peak_rss_self_gib": round(self.self_gib, 4),
               f"{stage}.peak_rss_tree_gib": round(self.tree_gib, 4)}
        if self.children_gib is not None:
            out[f"{stage}.peak_rss_children_gib"] = round(self.children_gib, 4)
        return out


def _reset_self_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _tree_rss(root: int, page: int) -> int:
    """Bytes resident in `root` and its descendants now (processes that vanish meanwhile are skipped)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            rss[int(d)] = int(Path(f"/proc/{d}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
        parent[int(d)] = ppid
    keep = {root}
    changed = True
    while changed:  # descendants: any process whose parent is kept
        changed = False
        for pid, ppid in parent.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    return sum(rss.get(pid, 0) for pid in keep)


class PeakRss:
    """with PeakRss() as m: ...; m.peak -> Peak (also when the body raised)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak: Peak | None = None
        self._stop = threading.Event()
        self._tree = 0

    def _sample(self) -> None:
        page, pid = os.sysconf("SC_PAGE_SIZE"), os.getpid()
        while True:
            try:
                self._tree = max(self._tree, _tree_rss(pid, page))
            except OSError:  # no /proc: the getrusage view alone
                return
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "PeakRss":
        self._reset = _reset_self_hwm()
        self._children0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self._thread = threading.Thread(target=self._sample, name="cardforge-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        grew = children_kib > self._children0
        self.peak = Peak(self_gib=self_kib * KIB / GIB, children_gib=children_kib * KIB / GIB if grew else None,
                         tree_gib=self._tree / GIB, self_reset=self._reset)
