"""Progress lines with a total, the rate and an ETA, for the stages' long loops (data samples, quant steps, eval
requests, the MTP bench): `[quant] 3/9 steps (33%) 41 s, ETA 1m22s: Q4_K_M`.

Plain lines on stderr, not a redrawn bar: they read the same in a terminal, a log file and a pipeline's captured
output. At most one line per `every_s` seconds (the last one always), so a fast loop does not flood the log.
Training uses Lightning's bar instead (`cardforge.train.callbacks.progress_bar`), with the same total and ETA.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def duration(s: float) -> str:
    """12 s, 3m05s, 1h02m."""
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    """`step()` once per finished item (thread-safe); prints `[label] k/N unit (p%) elapsed, ETA t: note`."""

    def __init__(self, total: int, label: str, unit: str = "items", every_s: float = 2.0, file: TextIO | None = None,
                 clock=time.monotonic):
        self.total, self.label, self.unit, self.every_s = max(0, int(total)), label, unit, every_s
        self.file, self.clock = file, clock
        self.done, self.t0, self._last = 0, clock(), float("-inf")
        self._lock = threading.Lock()

    def eta(self) -> float | None:
        if not self.done or not self.total:
            return None
        return (self.clock() - self.t0) / self.done * (self.total - self.done)

    def line(self, note: str = "") -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        elapsed = self.clock() - self.t0
        eta = self.eta()
        tail = f", ETA {duration(eta)}" if eta is not None and self.done < self.total else ""
        return (f"[{self.label}] {self.done}/{self.total} {self.unit}{pct} {duration(elapsed)}{tail}"
                + (f": {note}" if note else ""))

    def step(self, n: int = 1, note: str = "", force: bool = False) -> str | None:
        with self._lock:
            self.done += n
            now = self.clock()
            if not (force or self.done >= self.total or now - self._last >= self.every_s):
                return None
            self._last = now
            text = self.line(note)
        print(text, file=self.file or sys.stderr, flush=True)
        return text

    def start(self, note: str = "") -> str:
        """The first line (0/N), so a silent warm-up still says what is coming."""
        text = self.line(note)
        self._last = self.clock()
        print(text, file=self.file or sys.stderr, flush=True)
        return text
