"""`make reproduce` for real (issue 9 item 4): the whole tiny chain, every real stage, into temporary outputs and a
temporary MLflow store; then a rerun that skips every stage but the card, and `force=[eval]`. Slow (about 10 min
on 2 cores after `make setup`): `make test-full` or `pytest -m slow tests/integration/test_reproduce_tiny.py`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

MEASURING = ["models", "data", "train", "merge", "mtp", "quant", "eval"]  # the tiny preset chains all of them
EXPERIMENT = "t-reproduce-tiny"


def _pipeline(tmp: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cardforge.pipeline", "experiment=tiny", f"logger.experiment_name={EXPERIMENT}",
           f"paths.outputs={tmp / 'out'}", f"hydra.run.dir={tmp / 'hydra'}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-5000:]}"
    return proc


def _ran(stderr: str) -> list[str]:
    return re.findall(r"^\[pipeline\] (\w+) \.\.\.$", stderr, re.M)


def _unchanged(stderr: str) -> list[str]:
    return re.findall(r"^\[pipeline\] (\w+): unchanged", stderr, re.M)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    t0 = time.perf_counter()
    first = _pipeline(tmp, uri)
    return tmp, uri, first, time.perf_counter() - t0


def test_the_whole_tiny_chain_compiles_a_card_with_tables_and_run_ids(chain):
    tmp, uri, first, seconds = chain
    assert _ran(first.stderr) == [*MEASURING, "card"], first.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["cardforge.stage"] == "pipeline"]
    assert parent.info.status == "FINISHED"
    children = {r.data.tags["cardforge.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parent.info.run_id}
    assert set(children) == {*MEASURING, "card"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    for stage in [*MEASURING, "card"]:  # peak memory per stage, for the results table
        assert parent.data.metrics[f"{stage}.peak_rss_gib"] > 0.05, stage

    card = tmp / "out" / "card" / "README.md"
    text = card.read_text()
    assert text.startswith("---\n")
    assert re.search(r"^## .*English$", text, re.M) and re.search(r"^## .*中文$", text, re.M)
    assert f"`{parent.info.run_id}`" in text  # the card says which pipeline run it compiled
    refs = set(re.findall(r"\[run ([0-9a-f]{8})\]", text))
    for stage in ("train", "quant", "eval"):  # the measured tables cite the runs that measured them
        assert children[stage].info.run_id[:8] in refs, stage
    assert re.search(r"^\| gpqa_diamond \|", text, re.M) and re.search(r"^\| mmlu \|", text, re.M)
    assert re.search(r"^\| `Q4_K_M", text, re.M)  # the per-quant table
    assert "**Not measured" not in text
    import json

    from cardforge.card import audit

    values = json.loads((tmp / "out" / "card" / "card.json").read_text())["values"]
    assert audit.audit(text, values, client) == len(audit.numbers(text)) > 100  # the exact audit, full settings
    print(f"\nwhole tiny chain: {seconds:.0f} s")


def test_rerun_skips_every_stage_but_the_card(chain):
    tmp, uri, _, _ = chain
    again = _pipeline(tmp, uri)
    assert _ran(again.stderr) == ["card"], again.stderr[-3000:]
    assert _unchanged(again.stderr) == MEASURING


def test_force_eval_reruns_eval(chain):
    tmp, uri, _, _ = chain
    forced = _pipeline(tmp, uri, "force=[eval]")
    assert _ran(forced.stderr) == ["eval", "card"], forced.stderr[-3000:]
    assert _unchanged(forced.stderr) == MEASURING[:-1]
    text = (tmp / "out" / "card" / "README.md").read_text()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    latest = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                filter_string="tags.`cardforge.stage` = 'eval'")[0]
    assert f"[run {latest.info.run_id[:8]}]" in text  # the card cites the rerun's eval
