"""Sweeps of the train stage through real Hydra launchers on this host: SLURM's local executor
(`hydra/launcher=submitit_local`, hydra-submitit-launcher) and a local Ray runtime (`hydra/launcher=ray_local`,
hydra-ray-launcher). Each sweep has three jobs: two train (2 steps, tiny model, CPU) and one fails (a LoRA target
that matches nothing); the two finish under one MLflow parent run anyway, and the failure is reported per job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SWEEP = "lora.target_modules=choice([q_proj,v_proj],[o_proj],[no_such_proj])"


@pytest.mark.slow
def test_submitit_local_sweep(tiny_train_outputs, tmp_path, mlflow_uri, mlflow_experiment):
    _sweep("submitit_local", tiny_train_outputs, tmp_path, mlflow_uri, mlflow_experiment)


@pytest.mark.slow
def test_ray_local_sweep(tiny_train_outputs, tmp_path, mlflow_uri, mlflow_experiment):
    _sweep("ray_local", tiny_train_outputs, tmp_path, mlflow_uri, mlflow_experiment)


def _sweep(launcher, tiny_train_outputs, tmp_path, mlflow_uri, mlflow_experiment):
    # (not parametrized: pytest's "[id]" in tmp_path would break Hydra's override grammar)
    import mlflow

    sweep_dir = tmp_path / "multirun"
    cmd = [sys.executable, "-m", "cardforge.train", "-m", f"hydra/launcher={launcher}", SWEEP,
           "trainer.max_steps=2", f"paths.outputs={tiny_train_outputs}", f"logger.experiment_name={mlflow_experiment}",
           f"hydra.sweep.dir={sweep_dir}"]
    if launcher == "ray_local":
        cmd.append("hydra.launcher.ray.init.num_cpus=2")  # two jobs at a time, the third waits for a slot
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode != 0, "a sweep with a failed job must not exit 0"  # Hydra re-raises the failure...
    # ...after every job returned: the per-job report
    assert "[sweep] 3 jobs: 2 completed, 1 failed" in err, err[-4000:]
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    by_target = {next(o for o in r["overrides"] if o.startswith("lora.target_modules=")): r for r in summary["jobs"]}
    assert {k: r["status"] for k, r in by_target.items()} == {
        "lora.target_modules=[q_proj,v_proj]": "COMPLETED", "lora.target_modules=[o_proj]": "COMPLETED",
        "lora.target_modules=[no_such_proj]": "FAILED"}
    failed = by_target["lora.target_modules=[no_such_proj]"]
    assert failed["error"].startswith("LoraTargetError: lora.target_modules: no_such_proj match no linear module")
    assert f"#{failed['num']} FAILED" in err
    # the launcher ran the jobs, not the launching process
    assert all(r["pid"] != proc.pid for r in summary["jobs"])
    if launcher == "submitit_local":
        assert len(list((sweep_dir / ".submitit").glob("*/*_submitted.pkl"))) == 3

    runs = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")
    parents = [r for r in runs if r.data.tags.get("cardforge.sweep") == "true"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == summary["mlflow_parent_run_id"]
    assert parent.info.status == "FAILED" and parent.data.tags["cardforge.sweep.failed_jobs"] == "1"
    children = {r.data.params["lora.target_modules"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {k: r.info.status for k, r in children.items()} == {
        '["q_proj", "v_proj"]': "FINISHED", '["o_proj"]': "FINISHED", '["no_such_proj"]': "FAILED"}
    assert all("train/loss" in children[k].data.metrics for k in ('["q_proj", "v_proj"]', '["o_proj"]'))
    assert len(list((tiny_train_outputs / "train" / "runs").glob("*/adapter/adapter_model.safetensors"))) == 2
