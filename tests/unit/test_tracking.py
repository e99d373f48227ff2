"""MLflow tracking against a real sqlite store in tmp_path: nesting, params, tags, failure status."""

from __future__ import annotations

from pathlib import Path

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


# --- issue 25: runs tell the truth after kill -9; params identify the run; names say what it computes ---

_KILLED_STAGE = r"""
import subprocess, sys, time
from pathlib import Path
from cardforge.core import tracking
from cardforge.core.config.compose import compose
exp, outputs = sys.argv[1], sys.argv[2]
cfg = compose("train", [f"logger.experiment_name={exp}", f"paths.outputs={outputs}", "lora.r=16",
                        "trainer.max_steps=80"])
with tracking.stage_run(cfg, "train") as run:
    child = subprocess.Popen(["sleep", "300"])  # stands in for llama-quantize: inherits the run's environment
    Path(outputs, "quant").mkdir(parents=True, exist_ok=True)
    Path(outputs, "quant", ".model-Q4_K_M.gguf.tmp").write_bytes(b"x" * 1000)
    Path(outputs, "quant", ".adapter.abc.tmp").mkdir()
    print(run.info.run_id, child.pid, flush=True)
    time.sleep(300)
"""


def test_kill_9_run_is_marked_killed_its_children_and_temp_files_cleaned_and_rerun_linked(
        mlflow_uri, mlflow_experiment, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    outputs = tmp_path / "artifacts"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_STAGE, mlflow_experiment, str(outputs)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri})
    try:
        run_id, child = proc.stdout.readline().split()
        child = int(child)
    finally:
        proc.kill()  # kill -9: nothing in the stage gets to end its run
        proc.wait()
    client = MlflowClient(mlflow_uri)
    old = client.get_run(run_id)
    assert old.info.status == "RUNNING"
    assert old.info.run_name == "train r=16 steps=80"
    assert old.data.tags["cardforge.pid"] == str(proc.pid)
    assert tracking.process_start(child), "the orphaned child should still run before the next invocation"
    assert list(tracking.stale_temp_files(outputs))

    cfg = compose("train", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={outputs}", "lora.r=16",
                            "trainer.max_steps=80"])
    with tracking.stage_run(cfg, "train") as new:
        pass
    old = client.get_run(run_id)
    assert old.info.status == "KILLED"
    assert old.info.run_name == "train r=16 steps=80 [killed]"
    assert old.data.tags["cardforge.resumed_by"] == new.info.run_id
    new = client.get_run(new.info.run_id)
    assert new.data.tags["resumed_from"] == run_id
    assert new.info.run_name == "train r=16 steps=80 [resumed]"
    # the orphan is stopped (a zombie until init reaps it counts as gone: no start time once reaped, state Z before)
    state = tracking._read(f"/proc/{child}/stat").rpartition(")")[2].split()[:1]
    assert state in ([], ["Z"]), f"child {child} still running: {state}"
    assert tracking.stale_temp_files(outputs) == []
    # a third run of the same config is a fresh one: the killed run was resumed once already
    with tracking.stage_run(cfg, "train") as third:
        pass
    assert "resumed_from" not in client.get_run(third.info.run_id).data.tags


def test_owner_alive_tells_a_reused_pid_and_another_host_apart():
    import os

    me = tracking.owner_tags()
    assert tracking.owner_alive(me) is True
    assert tracking.owner_alive({**me, "cardforge.proc_start": "1"}) is False  # same pid, another process
    assert tracking.owner_alive({**me, "cardforge.boot_id": "another-boot"}) is False
    assert tracking.owner_alive({**me, "cardforge.host": "elsewhere"}) is None  # cannot tell: left alone
    assert tracking.owner_alive({**me, "cardforge.pidns": "pid:[1]"}) is None  # another container's pids
    assert tracking.owner_alive({**me, "cardforge.pid": str(2**22 + os.getpid())}) is False


def test_temp_files_of_a_live_run_sharing_the_outputs_are_kept(mlflow_uri, mlflow_experiment, tmp_path):
    outputs = tmp_path / "out"
    cfg = compose("train", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={outputs}"])
    tmp = outputs / "train" / ".last.ckpt.10.tmp"
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"in flight")
    with tracking.stage_run(cfg, "train"):  # a live run (this process) owns the outputs
        with tracking.stage_run(cfg, "merge"):
            pass
        assert tmp.exists()


@pytest.mark.parametrize("stage,overrides,name", [
    ("train", ["lora.r=16", "trainer.max_steps=80"], "train r=16 steps=80"),
    ("train", ["trainer.max_steps=-1", "trainer.max_epochs=2"], "train r=64 epochs=2"),
    ("data", ["data.num_samples=8"], "data n=8 teacher=smollm2-135m-instruct"),
    ("quant", ["format=gguf"], "quant gguf"),
    ("quant", [], "quant all formats"),
])
def test_run_names_say_what_the_run_computes(stage, overrides, name):
    cfg = compose("train" if stage == "data" else stage, overrides)
    assert tracking.default_run_name(cfg, stage) == name


def test_params_are_the_stage_sections_and_the_experiment(cfg, mlflow_uri):
    cfg = compose("train", [f"logger.experiment_name={cfg.logger.experiment_name}"])
    with tracking.stage_run(cfg, "train") as run:
        pass
    params = MlflowClient(mlflow_uri).get_run(run.info.run_id).data.params
    sections = {k.split(".")[0] for k in params}
    assert sections == {"experiment", "stage", "model", "teacher", "data", "lora", "trainer"}
    assert not any(k.startswith("card.") for k in params)
    assert len(params) < 100, len(params)
    assert params["experiment"] == "tiny" and params["lora.r"] == "64"
    assert len(tracking.safe_params(compose("card"), "card")) < len(tracking.safe_params(compose("card")))
    assert not any(k.startswith("card.attribution") for k in tracking.safe_params(compose("card"), "card"))


def test_library_never_opens_an_experiment_by_name_only():
    # mlflow.set_experiment(name) creates a missing experiment under the store's default artifact root: for a sqlite
    # store that is the cwd's ./mlruns, resolved when the process first opened the store. Every experiment must come
    # from get_or_create_experiment (artifacts next to the store), and no run may open in the Default experiment.
    import re

    root = Path(__file__).resolve().parents[2] / "packages"
    offenders = []
    for py in root.rglob("*.py"):
        text = py.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"mlflow\.set_experiment\(", line) or (
                    re.search(r"mlflow\.start_run\(", line) and "experiment_id" not in line
                    and "run_id" not in line and "nested" not in line and "**kwargs" not in line):
                offenders.append(f"{py.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)
    stage_run = (root / "core/src/cardforge/core/tracking.py").read_text()
    assert '"experiment_id": exp_id' in stage_run  # the one **kwargs call above names its experiment
