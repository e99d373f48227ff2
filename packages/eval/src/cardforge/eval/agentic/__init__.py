"""The agentic suite's tasks and runner (`eval.suites=[agentic]`, benchmarks/agentic.py).

22 multi-step tasks of our own (files, shell, python, data wrangling) that the evaluated model performs
with real tools in the bubblewrap sandbox, through the agent runtime's ReAct loop (`runner.py`); each is
scored by a checker of the final workspace (`task.py`). Task ids are unique and stable: records resume
by id.
"""

from __future__ import annotations

from cardforge.eval.agentic import code, data, files_shell
from cardforge.eval.agentic.task import AgenticTask, Fail, run_check

TASKS: list[AgenticTask] = [*files_shell.TASKS, *data.TASKS, *code.TASKS]
BY_ID = {t.id: t for t in TASKS}
assert len(BY_ID) == len(TASKS), "agentic task ids must be unique"

__all__ = ["BY_ID", "TASKS", "AgenticTask", "Fail", "run_check"]
