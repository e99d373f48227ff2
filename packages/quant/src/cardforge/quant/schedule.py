"""Run the quant stage's independent steps side by side and time each one.

On the tiny model most of the stage's time is single-threaded (the converter's Python, llama.cpp loading a
248k-token vocabulary, llama-quantize's per-tensor loop), so N one-thread steps on N cores finish far sooner
than N-thread steps one after another. `run_steps` starts every step whose `after` steps have finished, in list
order (put the critical path first), while fewer than `slots` steps are running.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Step:
    name: str
    fn: Callable[[], Any]
    after: tuple[str, ...] = ()
    group: str = ""  # the format it belongs to (gguf / fp8 / nvfp4): spans are reported per group


_local = threading.local()


def add_child_cpu(seconds: float) -> None:
    """Charge a finished child process's CPU seconds to the step running in this thread (if any)."""
    _local.child_cpu = getattr(_local, "child_cpu", 0.0) + seconds


@dataclass
class Timing:
    start: float  # seconds since run_steps began
    end: float
    cpu: float = 0.0  # this step's thread + the child processes it reported (add_child_cpu): comparable
    #                   across runs on a loaded machine, where wall seconds are not

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Outcome:
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Timing] = field(default_factory=dict)

    def span(self, group: str, steps: list[Step]) -> float:
        """Wall seconds from the group's first start to its last end (its steps overlap other groups')."""
        ts = [self.timings[s.name] for s in steps if s.group == group and s.name in self.timings]
        return max(t.end for t in ts) - min(t.start for t in ts) if ts else 0.0


def run_steps(steps: list[Step], slots: int, on_done: Callable[[str, float], None] | None = None) -> Outcome:
    """Run `steps` with at most `slots` at once; a step starts once all of its `after` steps succeeded.

    The first failure stops new starts; the steps already running finish, then that failure is raised.
    """
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate step names: {sorted(n for n in set(names) if names.count(n) > 1)}")
    seen: set[str] = set()
    for s in steps:  # deps must come earlier in the list: no cycles, and every dep exists
        unknown = [d for d in s.after if d not in seen]
        if unknown:
            raise ValueError(f"step {s.name} runs after {unknown}, which are not listed before it")
        seen.add(s.name)

    out = Outcome()
    cond = threading.Condition()
    pending = list(steps)
    running: set[str] = set()
    errors: list[BaseException] = []
    t0 = time.perf_counter()

    def work(step: Step) -> None:
        start, cpu0 = time.perf_counter() - t0, time.thread_time()
        _local.child_cpu = 0.0
        try:
            result, error = step.fn(), None
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            result, error = None, e
        end = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0 + _local.child_cpu
        if on_done and error is None:
            # before the step counts as finished: run_steps returns only after the last step's report (called
            # after, the caller could return and print on while this daemon thread had not reported yet)
            try:
                on_done(step.name, end - start)
            except Exception:  # noqa: BLE001 - a progress report must not fail (or hang) the run
                pass
        with cond:
            running.discard(step.name)
            out.timings[step.name] = Timing(start, end, cpu)
            if error is None:
                out.results[step.name] = result
            else:
                errors.append(error)
            cond.notify_all()

    with cond:
        while pending or running:
            if not errors:
                for step in list(pending):
                    if len(running) >= max(1, slots):
                        break
                    if all(d in out.results for d in step.after):
                        pending.remove(step)
                        running.add(step.name)
                        threading.Thread(target=work, args=(step,), name=f"quant-{step.name}", daemon=True).start()
            if errors and not running:
                break
            cond.wait(timeout=1.0)
    if errors:
        raise errors[0]
    return out
