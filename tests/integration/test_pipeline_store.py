"""The pipeline's bookkeeping goes to the store its parent run was opened in, even where a stage points the process's
MLflow tracking URI (and with it $MLFLOW_TRACKING_URI) at another store: the stage's and the parent's termination,
the per-stage metrics and the tags written after a stage."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from cardforge.core import tracking
from cardforge.core.config.compose import compose
from cardforge.pipeline import run as pipeline_run
from cardforge.pipeline.run import StageSpec


@pytest.fixture()
def global_uri_restored():
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


@pytest.mark.parametrize("explicit", [False, True], ids=["env-store", "logger.tracking_uri"])
def test_a_stage_moving_the_global_tracking_uri_does_not_move_the_pipeline_bookkeeping(
        explicit, mlflow_uri, mlflow_experiment, tmp_path, monkeypatch, global_uri_restored):
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    (tmp_path / "other").mkdir()
    configured = f"sqlite:///{tmp_path / 'configured.db'}" if explicit else mlflow_uri
    cfg = compose("pipeline")
    # set here, not as overrides: the parametrized test's names hold '[', which Hydra's override grammar refuses
    cfg.logger.experiment_name, cfg.paths.outputs = mlflow_experiment, str(tmp_path / "out")
    if explicit:
        cfg.logger.tracking_uri = configured

    def stage(cfg):
        with tracking.stage_run(cfg, "first"):
            mlflow.set_tracking_uri(other)  # e.g. a library the stage calls opens its own store
            return {"stage": "first"}

    monkeypatch.setattr(pipeline_run, "resolve_stage", lambda target: stage)
    result = pipeline_run.run(cfg, stages=[StageSpec("first", "standin:first", 0, ("data",))])
    assert mlflow.get_tracking_uri() == other  # the stage's choice is left as it made it

    client = MlflowClient(configured)
    exp = client.get_experiment_by_name(mlflow_experiment)
    runs = {r.data.tags["cardforge.stage"]: r for r in client.search_runs([exp.experiment_id])}
    parent, child = runs["pipeline"], runs["first"]
    assert parent.info.run_id == result.run_id
    assert (parent.info.status, child.info.status) == ("FINISHED", "FINISHED")  # termination (tracking.end_run)
    assert parent.data.metrics["first.seconds"] >= 0  # _log_stage_metrics, on the parent ...
    assert "first.peak_rss_gib" in child.data.metrics  # ... and on the stage's run
    assert child.data.tags["cardforge.outputs_sha256"]  # _tag_run
    assert parent.data.tags["cardforge.stages_done"] == "first"  # tag_parent
    other_client = MlflowClient(other)
    assert other_client.search_runs([e.experiment_id for e in other_client.search_experiments()]) == []


def test_end_run_by_id_terminates_in_the_named_store(tmp_path, global_uri_restored):
    """A run no longer on the fluent stack is ended by id, in its own store."""
    mine, other = (f"sqlite:///{tmp_path / name}.db" for name in ("mine", "other"))
    client = MlflowClient(mine)
    run = client.create_run(client.create_experiment("e"))
    mlflow.set_tracking_uri(other)
    tracking.end_run(run.info.run_id, "KILLED", mine)
    assert client.get_run(run.info.run_id).info.status == "KILLED"
