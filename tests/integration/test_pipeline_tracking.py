"""The pipeline and Hydra multirun against a real MLflow store: one parent per invocation or sweep."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow import MlflowClient


def _run(args, uri, tmp_path, experiment):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    flags = [a for a in args if a.startswith("-")]  # Hydra's argparse wants flags before overrides
    cmd = [sys.executable, "-m", "cardforge.pipeline", *flags, f"logger.experiment_name={experiment}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.run.dir={tmp_path / 'run'}",
           f"paths.outputs={tmp_path / 'out'}",
           *[a for a in args if not a.startswith("-")]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_pipeline_stops_clearly_at_a_missing_stage(mlflow_uri, mlflow_experiment, tmp_path, tiny_vl_model_dir):
    from cardforge.core.config.compose import compose
    from cardforge.pipeline.run import STAGES, StageSpec, run

    cfg = compose("pipeline", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={tmp_path / 'out'}"])
    missing = StageSpec("data", "cardforge.not_built_yet.stage:run", 3, ("data",))
    result = run(cfg, stages=[STAGES[0], missing])
    assert (result.done, result.stopped_at) == (["models"], "data")
    assert result.reason == "stage 'data' is not implemented yet (issue #3)"
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(mlflow_experiment)
    runs = {r.data.tags["cardforge.stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"pipeline", "models"}
    assert runs["models"].data.tags["mlflow.parentRunId"] == runs["pipeline"].info.run_id
    assert runs["pipeline"].data.tags["cardforge.stages_done"] == "models"
    assert runs["pipeline"].data.tags["cardforge.stopped_at"] == "data"
    assert runs["models"].data.params["models.tiny-qwen36-vl-mtp.path"] == str(tiny_vl_model_dir)  # the tiny default


def test_until_names_a_stage(tmp_path):
    proc = _run(["until=nope"], "sqlite:///" + str(tmp_path / "m.db"), tmp_path, "t-until")
    assert proc.returncode == 2  # refused at composition, before any MLflow run or stage
    assert proc.stderr.strip().splitlines() == ["cardforge pipeline: config error: until: unknown stage 'nope'; "
                                                "choose one of: models, data, train, merge, mtp, quant, eval, card"]
    assert not (tmp_path / "m.db").exists()


def test_plan_rows_follow_the_stages_the_chain_runs():
    from cardforge.core.config.compose import compose
    from cardforge.pipeline import plan
    from cardforge.pipeline.run import STAGES

    for overrides in ([], ["mtp=grafted"], ["experiment=qwen36_27b_card"], ["experiment=smollm2_demo"]):
        cfg = compose("pipeline", overrides)
        chained = [s.name for s in STAGES if not s.enabled_by or cfg.mtp.enabled]
        assert [row[0] for row in plan.plan(cfg)] == chained, overrides
    tiny = dict((s, n) for s, _, n in plan.plan(compose("pipeline")))
    assert "GPU" not in " ".join(tiny.values())  # the CPU preset's plan asks for no GPU


def test_plan_true_on_the_cli_prints_and_exits_0(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    proc = _run(["experiment=qwen36_27b_card", "plan=true"], "sqlite:///" + str(tmp_path / "m.db"), tmp_path, "t-plan")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("pipeline plan for experiment=qwen36_27b_card (GPU):\n| stage | command | needs |")
    assert "| mtp | `python -m cardforge.train.mtp experiment=qwen36_27b_card` | GPU: " in out
    assert "cannot run on this machine" in out and "  - no CUDA GPU visible" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()  # nothing ran, no MLflow run


def test_multirun_groups_jobs_under_one_sweep_run(mlflow_uri, mlflow_experiment, tmp_path, tiny_model_dir,
                                                 smollm2_model_dir):
    proc = _run(["-m", "model=tiny_qwen35_mtp,smollm2_135m", "until=models"], mlflow_uri, tmp_path, mlflow_experiment)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(mlflow_experiment)
    runs = client.search_runs([exp.experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("cardforge.sweep") == "true"]
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert sweep.info.status == "FINISHED"
    assert "model=tiny_qwen35_mtp,smollm2_135m" in sweep.data.tags["cardforge.sweep.overrides"]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sorted(r.data.params["model.name"] for r in jobs) == ["smollm2-135m-instruct", "tiny-qwen35-mtp"]
    assert all(r.data.tags["cardforge.stage"] == "pipeline" for r in jobs)


def test_rerun_skips_unchanged_stages_and_force_reruns(mlflow_uri, mlflow_experiment, tmp_path, tiny_model_dir):
    first = _run(["until=models"], mlflow_uri, tmp_path, mlflow_experiment)
    assert "[pipeline] models ..." in first.stderr, first.stderr[-2000:]
    second = _run(["until=models"], mlflow_uri, tmp_path, mlflow_experiment)
    assert "[pipeline] models: unchanged" in second.stderr and "[pipeline] models ..." not in second.stderr
    forced = _run(["until=models", "force=[models]"], mlflow_uri, tmp_path, mlflow_experiment)
    assert "[pipeline] models ..." in forced.stderr
    changed = _run(["until=models", "teacher.model=tiny-qwen35-mtp"], mlflow_uri, tmp_path, mlflow_experiment)
    assert "[pipeline] models ..." in changed.stderr  # a section the stage reads changed


def test_card_preset_prints_the_plan_and_stops_clearly_without_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    proc = _run(["experiment=qwen36_27b_card"], "sqlite:///" + str(tmp_path / "m.db"), tmp_path, "t-plan")
    assert proc.returncode == 2
    err = proc.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in err.splitlines() if line.startswith("| ")}
    assert list(rows) == ["stage", "models", "data", "train", "merge", "mtp", "quant", "eval", "card"]
    for stage in ["data", "train", "merge", "mtp", "quant", "eval", "card"]:
        assert f"| {stage} | `python -m cardforge." in rows[stage]
    assert "GGUF Q4_K_M, Q5_K_M, Q6_K, Q8_0" in err and "1842 samples" in err
    # mtp/card.yaml switches the mtp stage on; it and eval run on the GPU too
    assert rows["mtp"].startswith("| mtp | `python -m cardforge.train.mtp experiment=qwen36_27b_card` | GPU: ")
    assert "2048 prompts x 2 continuations of 2048 tokens, 4000 steps" in rows["mtp"]
    # sizes from the real checkpoint layout (tests/unit/test_plan_layout.py checks them against the card's files)
    assert "| GPU (all layers offloaded) for llama-server on the Q4_K_M GGUF (~16.7 GB (15.6 GiB))" in rows["eval"]
    assert "GPU for LoRA r64 on 27.8B" in rows["train"] and "LoRA r64 on 496 language-model modules" in rows["train"]
    last = err.strip().splitlines()[-1]
    assert last.startswith("cardforge pipeline: error: experiment=qwen36_27b_card cannot run on this machine: ")
    assert "no CUDA GPU visible" in last and "model.path=Qwen/Qwen3.6-27B" in last and "$DEEPSEEK_API_KEY" in last
    assert not (tmp_path / "out" / ".pipeline").exists()  # nothing ran
