"""BFCL v4 sets shipped by the bfcl-eval package: loaded by name, and our AST match accepts every item's own
possible answer (and rejects a wrong value) on the real data."""

from __future__ import annotations

import pytest

from cardforge.core.chat import ToolCall
from cardforge.core.errors import UserError
from cardforge.agent.bfcl import bfcl_tasks, match_calls


def _calls_from_truth(truth: list[dict]) -> list[ToolCall]:
    calls = []
    for entry in truth:
        (name, params), = entry.items()
        args = {k: next(a for a in allowed if a != "") for k, allowed in params.items() if allowed != [""]}
        calls.append(ToolCall(name=name, arguments=args))
    return calls


@pytest.mark.parametrize("name, n", [("simple_python", 400), ("multiple", 200), ("parallel", 200),
                                     ("parallel_multiple", 200)])
def test_real_sets_load_and_match_their_own_answers(name, n):
    tasks = bfcl_tasks(name)
    assert len(tasks) == n
    for t in tasks:
        truth = t.verifier["ground_truth"]
        assert match_calls(_calls_from_truth(truth), truth) is None, t.task_id
        assert t.tools and t.tools[0]["function"]["parameters"]["type"] == "object"
    # a wrong function name is rejected with a reason
    t = tasks[0]
    wrong = [ToolCall(name="not_" + c.name, arguments=c.arguments) for c in _calls_from_truth(t.verifier["ground_truth"])]
    assert "expected" in match_calls(wrong, t.verifier["ground_truth"])


def test_unknown_set_lists_the_choices():
    with pytest.raises(UserError, match="choose one of: .*simple_python"):
        bfcl_tasks("simple_pythonn")
