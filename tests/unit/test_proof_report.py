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


def _probed(ev: Path, invented: int, model_id: str) -> None:
    """Records of one served model with model_id + sampling_hash as the eval stage writes them, and the probe cache
    beside them: the first `invented` tasks wrote their own <tool_response>; one probe failed (not counted); a stale
    key of an earlier model says every task invented (must not be read)."""
    recs = []
    for kind in KINDS:
        for i in range(25):
            recs.append({"id": f"proof/heldout/{kind}-{'AB'[i % 2]}-{i:04d}", "finish_reason": "stop",
                         "correct": True, "model_id": model_id, "sampling_hash": "s1"})
    (ev / "distill").mkdir(parents=True)
    (ev / "distill" / "proof.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    probe = {r["id"]: {"finish_reason": "stop", "invented": n < invented, "text": ""} for n, r in enumerate(recs)}
    probe[recs[-1]["id"]] = {"finish_reason": "error", "invented": None, "text": ""}
    stale = {r["id"]: {"finish_reason": "stop", "invented": True} for r in recs}
    (ev / "distill" / "proof_probe.json").write_text(json.dumps({f"{model_id}|s1": probe, "old-model|s1": stale}))


def test_method_table_reads_the_invented_observation_rate_from_the_probe_beside_the_records(tmp_path):
    _probed(tmp_path / "a", 0, "gguf-sha256:aaa")
    _probed(tmp_path / "b", 10, "gguf-sha256:bbb")
    text, metrics = proof_report.report({"a": tmp_path / "a", "b": tmp_path / "b"})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith(("| a |", "| b |"))}
    assert "0.0% (0.0%–3.7%), 0/99" in rows["a"], rows["a"]  # 99: the failed probe is not a result
    assert "10.1% (" in rows["b"] and ", 10/99 |" in rows["b"], rows["b"]
    assert metrics["method.a.invented_rate"] == 0 and metrics["method.b.invented_rate"] == 10 / 99
