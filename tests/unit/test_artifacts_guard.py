"""No stage builds another stage's paths or keys by hand: `cardforge.core.artifacts` owns them (issue #23).

The guard reads every library module's syntax tree (docstrings and comments are free to name files) and
fails on
- `<anything>.paths.outputs`: the outputs root is `Outputs(cfg)`;
- a path literal naming a stage artifact (`quant_results.json`, `merge_result.json`, the MTP manifests, ...;
  a message with spaces may name the file): the handle's attribute names it (`Outputs(cfg).quant.results_file`, `QuantOutputs.RESULTS_ARTIFACT`);
- `... / "merge" / "model"` (and the other stage-folder / artifact pairs): `Outputs(cfg).merge.model`;
- a GGUF tier key spelled by hand (`"-imatrix"`, `"base:"`, `f"{tier}-imatrix"`): `Tier(name, imatrix).key`,
  `Tier.result_key(base=True)`, `QuantResults.gguf(tier)`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "packages/core/src/cardforge/core/artifacts.py"

# file names a stage writes for another stage (or for the card / release, through MLflow) to read
ARTIFACT_NAMES = ("quant_results.json", "quant_table.md", "merge_result.json", "train_result.json",
                  "mtp_manifest.base.json", "mtp_manifest.merged.json", "mtp_manifest.retrained.json",
                  "imatrix.gguf", "trajectories.jsonl", "rejections.jsonl", "spend.jsonl", "eval/summary.json",
                  "data/manifest.json")
# (stage folder, what a later stage reads in it): `... / "merge" / "model"` is Outputs(cfg).merge.model
STAGE_PAIRS = {("merge", "model"), ("mtp", "model"), ("train", "adapter"), ("quant", "gguf"), ("eval", "base-gguf"),
               ("data", "manifest.json")}
TIER_PIECES = ("-imatrix", "base:")

# path (relative to the repo) -> why it may build one by hand; keep it empty
ALLOWED: dict[str, str] = {}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _const(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def violations(source: str) -> list[tuple[int, str]]:
    """(line, what) for every hand-built stage path or key in `source`."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "outputs" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "paths":
            found.append((node.lineno, "<cfg>.paths.outputs: use Outputs(cfg)"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.BinOp) \
                and isinstance(node.left.op, ast.Div) and (_const(node.left.right), _const(node.right)) in STAGE_PAIRS:
            found.append((node.lineno, f'/ "{_const(node.left.right)}" / "{_const(node.right)}": use its handle'))
        elif isinstance(node, ast.JoinedStr):
            pieces = [_const(v) or "" for v in node.values]
            if any(p.startswith("-imatrix") or p.endswith("base:") for p in pieces):
                found.append((node.lineno, "a tier key built in an f-string: use Tier(...).key / result_key()"))
        elif (text := _const(node)) is not None and id(node) not in docs:
            if text in TIER_PIECES:
                found.append((node.lineno, f"{text!r}: a tier key piece; use Tier / is_base"))
            for name in ARTIFACT_NAMES:  # a path literal (no spaces); messages may name the file
                if name in text and not any(c.isspace() for c in text):
                    found.append((node.lineno, f"{name!r}: name it through cardforge.core.artifacts"))
    return found


def _library() -> list[Path]:
    files = sorted(p for p in (ROOT / "packages").glob("*/src/cardforge/**/*.py") if p != ARTIFACTS)
    assert len(files) > 50, "the library was not found"
    return files


def test_no_stage_builds_another_stages_paths_or_keys():
    bad = []
    for path in _library():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for line, what in violations(path.read_text()):
            bad.append(f"{rel}:{line}: {what}")
    assert not bad, "hand-built stage paths/keys (cardforge.core.artifacts owns them):\n" + "\n".join(bad)


@pytest.mark.parametrize("snippet", [
    'out = Path(cfg.paths.outputs) / "quant"',
    'd = root / "merge" / "model"',
    'f = res / "quant_results.json"',
    'key = f"{tier.name}-imatrix"',
    'key = f"base:{k}"',
    'keys = [k for k in files if not k.startswith("base:")]',
    'mlflow.log_artifact(str(p), "eval/summary.json")',
])
def test_the_guard_catches_each_kind(snippet):
    assert violations(snippet), snippet


def test_the_guard_lets_docstrings_and_handles_through():
    ok = '''"""Writes <outputs>/quant/quant_results.json; reads merge/model."""
def f(cfg):
    """merge/model and "Q4_K_M-imatrix" in prose are fine."""
    out = Outputs(cfg)
    return out.merge.model, out.quant.results().gguf("Q4_K_M"), Tier("Q4_K_M", True).key
'''
    assert violations(ok) == []
