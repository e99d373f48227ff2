"""MLflow tracking against a real sqlite store in tmp_path: nesting, params, tags, failure status."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from cardforge.core import tracking
from cardforge.core.config.compose import compose


@pytest.fixture()
def cfg(mlflow_uri, mlflow_experiment):
    return compose("train", [f"logger.experiment_name={mlflow_experiment}"])


def _runs(uri, cfg):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.logger.experiment_name)
    return client, client.search_runs([exp.experiment_id])


def test_stage_run_logs_config_params_and_tags(cfg, mlflow_uri, tmp_path):
    with tracking.stage_run(cfg, "train") as run:
        mlflow.log_metric("loss", 1.5)
    client, runs = _runs(mlflow_uri, cfg)
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.data.params["lora.r"] == "64"
    assert r.data.params["trainer.optimizer"] == "paged_adamw_8bit"
    assert r.data.params["lora.target_modules"].startswith('["q_proj"')
    assert r.data.tags["cardforge.stage"] == "train"
    assert r.data.tags["cardforge.experiment"] == "tiny"
    assert r.data.tags["cardforge.config_hash"] == tracking.config_hash(cfg)
    assert len(r.data.tags["git.commit"]) in (40, 7) or r.data.tags["git.commit"] == "unknown"
    # the artifact store sits next to the sqlite file, not in the cwd
    art = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))
    text = open(art).read()
    assert "lora_alpha: 128" in text and "hydra" not in text
    assert r.info.artifact_uri.startswith(tracking.artifact_root(mlflow_uri))


def test_long_values_are_truncated_not_fatal(cfg, mlflow_uri):
    long = "x" * 20000
    cfg.card.title = long
    with tracking.stage_run(cfg, "card"):
        pass
    _, runs = _runs(mlflow_uri, cfg)
    val = runs[0].data.params["card.title"]
    assert val.endswith("...[truncated; see config.yaml]") and len(val) < len(long)


def test_pipeline_nests_stage_runs(cfg, mlflow_uri):
    with tracking.pipeline_run(cfg) as parent:
        with tracking.stage_run(cfg, "data") as a:
            pass
        with tracking.stage_run(cfg, "train") as b:
            pass
    _, runs = _runs(mlflow_uri, cfg)
    by_id = {r.info.run_id: r for r in runs}
    assert by_id[a.info.run_id].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert by_id[b.info.run_id].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "mlflow.parentRunId" not in by_id[parent.info.run_id].data.tags


def test_parent_from_environment_for_subprocess_stages(cfg, mlflow_uri, monkeypatch):
    with tracking.pipeline_run(cfg) as parent:
        pass
    monkeypatch.setenv(tracking.PARENT_ENV, parent.info.run_id)
    with tracking.stage_run(cfg, "quant") as child:
        pass
    _, runs = _runs(mlflow_uri, cfg)
    child_run = next(r for r in runs if r.info.run_id == child.info.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_failed_stage_marks_run_failed(cfg, mlflow_uri):
    with pytest.raises(RuntimeError):
        with tracking.stage_run(cfg, "train"):
            raise RuntimeError("boom")
    _, runs = _runs(mlflow_uri, cfg)
    assert runs[0].info.status == "FAILED"


def test_config_hash_tracks_what_a_stage_computes():
    base = compose("train")
    assert tracking.config_hash(base) == tracking.config_hash(compose("train"))
    assert tracking.config_hash(base) != tracking.config_hash(compose("train", ["lora.r=8"]))
    # where things are written and how runs are named do not change what is computed
    assert tracking.config_hash(base) == tracking.config_hash(compose("train", ["paths.outputs=/elsewhere", "run_name=x"]))
    assert tracking.config_hash(base, ("lora",)) == tracking.config_hash(compose("train", ["trainer.lr=1"]), ("lora",))


def test_safe_params_flatten_lists_of_dicts():
    params = tracking.safe_params(compose("quant"))
    assert params["quant.gguf_tiers.0.tier"] == "Q4_K_M"
    assert params["quant.gguf_tiers.3.imatrix"] == "False"
