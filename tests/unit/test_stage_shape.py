"""Recipe shape (#23, ../shared/STYLE.md): every stage's `run(cfg)` returns a dataclass and reads as its named steps
(short: the steps are functions of their own). Read from the source, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_MODULES = sorted(p for p in (ROOT / "packages").glob("*/src/cardforge/**/*.py")
                     if "\ndef run(cfg" in p.read_text())  # module level (core.cli has a nested one)
MAX_RUN_LINES = 60  # a recipe, not the work: the longest today is merge's (49)


def _run_of(path: Path) -> tuple[ast.Module, ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    assert len(fns) == 1, path
    return tree, fns[0]


def test_every_stage_has_a_run():
    names = {str(p.relative_to(ROOT / "packages")).split("/src/")[1] for p in RUN_MODULES}
    for stage in ("cardforge/data/stage.py", "cardforge/train/stage.py", "cardforge/train/merge/stage.py",
                  "cardforge/train/mtp/stage.py", "cardforge/quant/stage.py", "cardforge/eval/stage.py",
                  "cardforge/card/stage.py", "cardforge/card/release.py", "cardforge/serve/stage.py",
                  "cardforge/pipeline/run.py", "cardforge/core/models/stage.py"):
        assert stage in names


@pytest.mark.parametrize("path", RUN_MODULES, ids=lambda p: str(p.relative_to(ROOT / "packages")))
def test_run_returns_a_dataclass_and_reads_as_its_steps(path):
    tree, fn = _run_of(path)
    assert fn.returns is not None, f"{path.name}: run(cfg) has no return annotation"
    name = ast.unparse(fn.returns)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert name in classes, f"{path.name}: run(cfg) -> {name}, not a class of the module"
    assert any("dataclass" in ast.unparse(d) for d in classes[name].decorator_list), f"{name} is not a dataclass"
    assert fn.end_lineno - fn.lineno + 1 <= MAX_RUN_LINES, f"{path.name}: run(cfg) is {fn.end_lineno - fn.lineno + 1} lines"
