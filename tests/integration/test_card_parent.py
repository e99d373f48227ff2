"""Which pipeline run the card (and the release) compiles by default: this invocation's, else the latest FINISHED
one; a run left RUNNING by a killed process or ended FAILED / KILLED is never picked unless named."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from cardforge.card import collect
from cardforge.core import tracking
from cardforge.core.config.compose import compose
from cardforge.core.errors import UserError


def _cfg(experiment: str, tmp_path):
    return compose("card", [f"logger.experiment_name={experiment}", f"paths.outputs={tmp_path}"])


def _stale_running(cfg, uri: str) -> str:
    """A pipeline parent as a SIGKILLed process leaves it: RUNNING forever."""
    client = MlflowClient(uri)
    exp_id = tracking.get_or_create_experiment(str(cfg.logger.experiment_name), uri)
    run = client.create_run(exp_id, run_name="pipeline:tiny",
                            tags={"cardforge.stage": "pipeline", "cardforge.experiment": str(cfg.experiment)})
    time.sleep(0.01)
    return run.info.run_id


def _failed(cfg) -> str:
    with pytest.raises(RuntimeError):
        with tracking.pipeline_run(cfg) as run:
            raise RuntimeError("a stage failed")
    return run.info.run_id


def test_the_latest_finished_pipeline_run_is_taken_not_a_newer_unfinished_one(mlflow_uri, mlflow_experiment,
                                                                             tmp_path):
    cfg = _cfg(mlflow_experiment, tmp_path)
    with tracking.pipeline_run(cfg) as finished:
        pass
    time.sleep(0.01)
    failed = _failed(cfg)
    stale = _stale_running(cfg, mlflow_uri)
    client = MlflowClient(mlflow_uri)
    assert client.get_run(failed).info.status == "FAILED" and client.get_run(stale).info.status == "RUNNING"
    assert collect.find_parent(cfg).info.run_id == finished.info.run_id
    # named explicitly, an unfinished one is still compiled (the user asked for it)
    named = compose("card", [f"logger.experiment_name={mlflow_experiment}", f"card.parent_run_id={stale}"])
    assert collect.find_parent(named).info.run_id == stale


def test_inside_a_pipeline_the_card_takes_this_invocation(mlflow_uri, mlflow_experiment, tmp_path):
    cfg = _cfg(mlflow_experiment, tmp_path)
    with tracking.pipeline_run(cfg):
        pass
    with tracking.pipeline_run(cfg) as current:  # RUNNING: the card stage runs inside it
        assert collect.find_parent(cfg).info.run_id == current.info.run_id


def test_only_unfinished_runs_is_an_error_naming_them(mlflow_uri, mlflow_experiment, tmp_path):
    cfg = _cfg(mlflow_experiment, tmp_path)
    failed = _failed(cfg)
    stale = _stale_running(cfg, mlflow_uri)
    with pytest.raises(UserError) as e:
        collect.find_parent(cfg)
    msg = str(e.value)
    assert msg.startswith(f"no finished pipeline run of experiment=tiny in MLflow experiment '{mlflow_experiment}'")
    assert f"(latest: {stale[:8]} RUNNING, {failed[:8]} FAILED)" in msg and "card.parent_run_id=RUN_ID" in msg
