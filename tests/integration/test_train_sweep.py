"""`python -m cardforge.train -m lora.r=8,16`: two trainings, one MLflow sweep parent, runs named by override."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_multirun_nests_both_trainings_under_one_sweep_run(tiny_train_outputs, tmp_path, mlflow_uri,
                                                           mlflow_experiment):
    import mlflow

    proc = subprocess.run(
        [sys.executable, "-m", "cardforge.train", "-m", "lora.r=8,16", "trainer.max_steps=2",
         f"paths.outputs={tiny_train_outputs}", f"logger.experiment_name={mlflow_experiment}",
         f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")
    parents = [r for r in runs if r.data.tags.get("cardforge.sweep") == "true"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["lora.r"] for r in children) == ["16", "8"]
    assert sorted(r.info.run_name for r in children) == ["train lora.r=16,trainer.max_steps=2", "train lora.r=8,trainer.max_steps=2"]
    assert all(r.info.status == "FINISHED" and "train/loss" in r.data.metrics for r in children)
    # each job has its own output folder: neither overwrote the other's adapter
    adapters = sorted((tiny_train_outputs / "train" / "runs").glob("*/adapter/adapter_model.safetensors"))
    assert len(adapters) == 2
