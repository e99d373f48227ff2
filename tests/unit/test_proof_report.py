"""proof_report (issue 19): the gate table per tier and the per-kind table, from eval record files laid out as the
eval stage writes them (<eval>/<label>/proof.jsonl, <eval>/tiers/<TIER>/<label>/proof.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from cardforge.eval import proof_report

KINDS = ("mul", "count", "sum", "grep")


def _write(path: Path, right: dict[str, int], n_per_kind: int = 25, category: bool = True) -> None:
    """n_per_kind records per kind, the first right[kind] of them correct; forms alternate A/B."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for kind in KINDS:
        for i in range(n_per_kind):
            r = {"id": f"proof/heldout/{kind}-{'AB'[i % 2]}-{i:04d}", "finish_reason": "stop",
                 "correct": i < right.get(kind, 0)}
            if category:
                r["category"] = kind
            lines.append(json.dumps(r))
    lines.append('{"torn')  # an interrupted run's last line is skipped
    path.write_text("\n".join(lines))


def test_gate_and_kind_tables(tmp_path):
    ev = tmp_path / "eval"
    _write(ev / "distill" / "proof.jsonl", {"mul": 20, "count": 25, "sum": 25, "grep": 25})
    _write(ev / "base" / "proof.jsonl", {})
    # BF16: only 7 of the 100 right -> +7 points, fails the +30 gate; records without category (kind from the id)
    _write(ev / "tiers" / "BF16" / "distill" / "proof.jsonl", {"grep": 7}, category=False)
    _write(ev / "tiers" / "BF16" / "base" / "proof.jsonl", {}, category=False)
    text, metrics = proof_report.report({"a": ev})
    gate = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.endswith(("PASS |", "FAIL |"))}
    assert gate["Q4_K_M-imatrix"].endswith("PASS |") and gate["BF16"].endswith("FAIL |")
    assert metrics["gate.Q4_K_M-imatrix.delta"] == 0.95 and metrics["gate.BF16.delta"] == 0.07
    assert "| Q4_K_M-imatrix | distill | 20/25 | 25/25 | 25/25 | 25/25 |" in text
    assert "| BF16 | distill | 0/25 | 0/25 | 0/25 | 7/25 |" in text
    assert "| BF16 | base | 0/25 | 0/25 | 0/25 | 0/25 |" in text
    assert metrics["kind.Q4_K_M-imatrix.distill.mul_accuracy"] == 0.8
    assert metrics["kind.BF16.distill.grep_accuracy"] == 0.28
