"""The quant stage's step scheduler: order, concurrency limit, failures, timings."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from cardforge.quant.schedule import Step, add_child_cpu, run_steps


def test_steps_run_after_their_dependencies_and_side_by_side():
    log, lock = [], threading.Lock()
    running, peak = [0], [0]

    def step(name, seconds=0.2):
        def fn():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                log.append(("start", name))
            time.sleep(seconds)
            with lock:
                running[0] -= 1
                log.append(("end", name))
            return name.upper()
        return fn

    steps = [Step("a", step("a")), Step("b", step("b")), Step("c", step("c"), ("a",)),
             Step("d", step("d"), ("a", "b")), Step("e", step("e"), ("c", "d"))]
    t0 = time.perf_counter()
    out = run_steps(steps, slots=2)
    wall = time.perf_counter() - t0
    assert out.results == {n: n.upper() for n in "abcde"}
    assert peak[0] == 2  # never more than `slots` at once, and two did overlap
    for n, deps in [("c", "a"), ("d", "ab"), ("e", "cd")]:
        for d in deps:
            assert log.index(("end", d)) < log.index(("start", n)), (n, d)
    assert wall < 5 * 0.2  # 3 waves of 0.2 s, not 5 steps one after another
    t = out.timings
    assert all(t[n].seconds >= 0.19 for n in "abcde") and t["e"].start >= t["d"].end
    assert out.span("", steps) == pytest.approx(t["e"].end - min(t[n].start for n in "ab"))


def test_one_slot_runs_in_list_order():
    order = []
    steps = [Step(n, lambda n=n: order.append(n)) for n in "xyz"]
    run_steps(steps, slots=1)
    assert order == list("xyz")


def test_a_failure_stops_new_steps_and_is_raised_after_running_ones_finish():
    done = []

    def slow():
        time.sleep(0.3)
        done.append("slow")

    def boom():
        raise ValueError("boom")

    steps = [Step("slow", slow), Step("boom", boom), Step("later", lambda: done.append("later"), ("boom",)),
             Step("independent", lambda: done.append("independent"))]
    with pytest.raises(ValueError, match="boom"):
        run_steps(steps, slots=2)
    assert done == ["slow"]  # the running step finished; nothing new started after the failure


def test_dependencies_must_be_listed_first():
    with pytest.raises(ValueError, match="not listed before it"):
        run_steps([Step("b", lambda: None, ("a",)), Step("a", lambda: None)], slots=2)
    with pytest.raises(ValueError, match="duplicate"):
        run_steps([Step("a", lambda: None), Step("a", lambda: None)], slots=2)


def test_child_cpu_is_charged_to_the_step_that_ran_it():
    from cardforge.quant.gguf import _run

    busy = [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"]
    out = run_steps([Step("child", lambda: _run(busy, "busy")), Step("idle", lambda: time.sleep(0.3)),
                     Step("manual", lambda: add_child_cpu(2.5))], slots=3)
    assert out.timings["child"].cpu >= 0.3
    assert out.timings["idle"].cpu < 0.1  # sleeping costs no CPU, and the child's CPU is not charged here
    assert out.timings["manual"].cpu >= 2.5


def test_a_failing_tool_raises_its_log_tail(tmp_path):
    from cardforge.quant.gguf import GgufError, _run

    log = tmp_path / "x.log"
    with pytest.raises(GgufError, match=r"(?s)tool failed \(exit 3\).*to stderr"):
        _run([sys.executable, "-c", "import sys; print('to stdout'); sys.stderr.write('to stderr'); sys.exit(3)"],
             "tool", log)
    assert "to stdout" in log.read_text() and "to stderr" in log.read_text()
