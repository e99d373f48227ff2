"""Issue 19's gate kept honest: a smaller run of the distill_proof preset (its training, 40 held-out tasks instead
of 100, no probe), every real stage (scripted expert ->
sandboxed execution + judge -> LoRA train -> merge -> GGUF BF16 + Q4_K_M-imatrix -> llama-server -> the agentic
runner on held-out tasks), must still show a significant distill-over-base gain at BOTH tiers. A broken chat
template, loss mask, parser or quant step leaves the student at the base's ~0% and fails it.

Slow (measured 27 min on the 2-core machine at load 8-13 with the 48-step variant; the 60-step one: see
conf/experiment/README.md "distill_proof"): `pytest -m slow tests/integration/test_distill_proof_slow.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cardforge.core.chat.jsonl import read_jsonl
from cardforge.eval import proof_report, stats

pytestmark = pytest.mark.slow

N_HELDOUT = 40  # 40 paired tasks: p < 0.001 needs >= 10 discordant pairs, all for the distilled model
# the preset's data and training (160 tasks, 60 steps), a smaller eval: 40 held-out tasks, no probe. A smaller
# training is below the chain's working point: 48 steps on 48 tasks (measured 2026-12-07) gave +87.5 points at BF16
# but only 3/20 form-B tasks at Q4_K_M-imatrix, where that student writes </tool_call> for <tool_call> right after
# its </think>; so the test would measure undertraining, not the chain.
SMALL = ["eval.proof_tasks=40", "eval.proof_probe=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill_proof")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "cardforge.pipeline", "experiment=distill_proof", "logger.experiment_name=t-proof",
           f"paths.outputs={tmp / 'out'}", f"hydra.run.dir={tmp / 'hydra'}", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-5000:]}"
    return tmp / "out"


def test_teacher_data_is_executed_and_judged(run):
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["counts"]["accepted"] >= 40  # the scripted expert solves its own family
    trajs, torn = read_jsonl(run / "data" / "trajectories.jsonl")  # the stored row keeps `extra` as a JSON string
    assert torn is None and len(trajs) == manifest["counts"]["accepted"]
    assert all(t.verdict.judge == "rules" and t.extra["tool_results"] == "execute" for t in trajs)


@pytest.mark.parametrize("tier", ["main", "BF16"])
def test_distilled_student_beats_the_base_significantly_at_each_tier(run, tier):
    d = run / "eval" if tier == "main" else run / "eval" / "tiers" / tier
    dist = proof_report.latest(d / "distill" / "proof.jsonl")
    base = proof_report.latest(d / "base" / "proof.jsonl")
    assert len(dist) == len(base) == N_HELDOUT
    cmp = stats.paired(dist, base)
    assert cmp["delta"] >= 0.30, (tier, cmp, stats.accuracy(dist), stats.accuracy(base))
    assert cmp["mcnemar_p"] < 0.001, (tier, cmp)
    # held-out surface form B is part of the gain, not only the trained form A
    assert sum(r["correct"] for r in dist if proof_report._group(r) == "form B") >= 5
