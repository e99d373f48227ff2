"""Train stage on the tiny Qwen3.5+MTP model: seeded first losses, MLflow records, clear input errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cardforge.core.config.compose import compose

# tiny-qwen35-mtp (content hash in the model cache), tests/conftest.py samples, seed 42, fp32 CPU, r 64
FIRST_LOSSES = [12.596852, 12.387518, 12.114282, 11.832723]


def _cfg(outputs, experiment, *extra):
    return compose("train", [f"paths.outputs={outputs}", f"logger.experiment_name={experiment}", *extra])


def test_seeded_run_pins_first_losses_and_logs_to_mlflow(tiny_train_outputs, mlflow_uri, mlflow_experiment):
    import mlflow

    from cardforge.train import stage

    result = stage.run(_cfg(tiny_train_outputs, mlflow_experiment, "trainer.max_steps=4"))
    print("losses", result.losses, "tokens/s", result.tokens_per_s)
    assert result.steps == 4 and result.optimizer == "adamw"  # paged_adamw_8bit falls back on CPU
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(FIRST_LOSSES), rtol=1e-4, atol=1e-4)
    assert result.losses[-1] < result.losses[0]
    assert result.lora_targets == {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 1, "gate_proj": 4, "up_proj": 4,
                                   "down_proj": 4, "in_proj_qkv": 3, "in_proj_z": 3, "in_proj_b": 3, "in_proj_a": 3,
                                   "out_proj": 3}
    adapter = tiny_train_outputs / "train" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}

    run = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")[0]
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert run.data.tags["cardforge.stage"] == "train" and run.data.tags["train.optimizer"] == "adamw"
    # the data load's counts and the chat template's identity are logged (the tiny default, tiny-qwen36-vl-mtp,
    # carries the base's own Qwen3.5 template)
    assert run.data.metrics["data/samples"] == 24 and run.data.metrics["data/skipped"] == 0
    assert run.data.tags["train.chat_template"] == "qwen3.5" and len(run.data.tags["train.chat_template_sha256"]) == 64
    assert result.data["samples"] == 24 and result.data["skipped"] == {}
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3]  # Lightning logs at the step the batch started
    torch.testing.assert_close(torch.tensor([m.value for m in history]), torch.tensor(FIRST_LOSSES), rtol=1e-4, atol=1e-4)
    for key in ("train/lr", "train/tokens_per_s", "train/trained_token_fraction"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 4, key
    frac = run.data.metrics["train/trained_token_fraction"]
    assert 0.2 < frac < 0.9  # prompts are masked out, the replies are trained
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "adapter", "config.yaml"} <= arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "adapter")} >= {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}


def test_missing_data_says_run_make_data(tmp_path):
    from cardforge.train.stage import MissingInputError, run

    with pytest.raises(MissingInputError, match=r"run the data stage first \(make data EXP=tiny"):
        run(compose("train", [f"paths.outputs={tmp_path}"]))


def test_cli_missing_data_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cardforge.train", f"paths.outputs={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"cardforge train: error: {tmp_path}/data/trajectories.jsonl does not exist: run the data stage first "
        "(make data EXP=tiny, or python -m cardforge.data), or set trainer.data_file=FILE.jsonl"]


@pytest.mark.slow
def test_compiled_layers_with_a_memory_budget_train_the_same_first_step(tiny_train_outputs, mlflow_uri,
                                                                        mlflow_experiment, monkeypatch):
    """`trainer.compile_layers` + `trainer.activation_memory_budget` on CPU: the stage compiles the decoder layers,
    pads batches to the multiple, and its first step (before any update, so dropout cannot matter) has the pinned
    eager loss; training then goes down."""
    import torch._functorch.config as functorch_config

    from cardforge.train import stage
    from cardforge.train.fast import patch

    compiled = []
    real = patch.compile_layers
    monkeypatch.setattr(patch, "compile_layers", lambda model: compiled.append(real(model)) or compiled[-1])
    # restored by hand, not with monkeypatch: its undo deletes the entry from torch's config module (torch 2.13
    # then reports `torch._functorch.config.activation_memory_budget does not exist` to every later reader, e.g.
    # torch.library.opcheck in test_fast_train.py)
    before = functorch_config.activation_memory_budget
    try:
        result = stage.run(_cfg(tiny_train_outputs, mlflow_experiment, "trainer.max_steps=2",
                                "trainer.compile_layers=true", "trainer.activation_memory_budget=0.5",
                                "trainer.pad_to_multiple_of=64"))
        assert functorch_config.activation_memory_budget == 0.5
    finally:
        functorch_config.activation_memory_budget = before
    assert compiled == [4]  # the tiny model's 4 decoder layers
    assert result.steps == 2
    assert abs(result.losses[0] - FIRST_LOSSES[0]) < 1e-4, result.losses
    assert result.losses[1] < result.losses[0]


@pytest.mark.slow
def test_packed_rows_train_through_the_stage(tiny_train_outputs, mlflow_uri, mlflow_experiment):
    """`trainer.pack_length` (issue #20): the stage packs the 24 samples into rows of data.max_seq_len tokens (one
    row here), keeps the varlen metadata on the CPU, and trains: finite, falling loss over the packed batches."""
    from cardforge.train import stage

    with pytest.raises(Exception, match="trainer.pack_length=512 is shorter than data.max_seq_len=1024"):
        stage.run(_cfg(tiny_train_outputs, mlflow_experiment, "trainer.max_steps=2", "trainer.pack_length=512"))
    result = stage.run(_cfg(tiny_train_outputs, mlflow_experiment, "trainer.max_steps=3", "trainer.pack_length=1024"))
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0]


@pytest.mark.slow
def test_the_long_row_setting_trains_as_plain_packed_rows(tiny_train_outputs, mlflow_uri, mlflow_experiment,
                                                          monkeypatch):
    """The 32k setting measured in the bench (issue #20: offloaded checkpoints + a memory budget on each layer's
    recompute + the GDN core recomputed in head groups, `trainer=gpu_card_long` on the card) is expressible in the
    stage, and it only trades memory for time: with dropout off, three steps over packed rows give the same losses
    as packed rows with compiled layers alone (the first one the same before any update; the others after the
    same updates)."""
    import shutil

    import torch._functorch.config as functorch_config

    from cardforge.train import fast, stage
    from cardforge.train.fast import offload

    # dynamo + AOTAutograd + the min-cut partitioner (where the budget applies) without building C++ kernels
    monkeypatch.setenv("CARDFORGE_COMPILE_BACKEND", "aot_eager_decomp_partition")
    groups = []
    real_enable = fast.enable
    monkeypatch.setattr(fast, "enable", lambda model, **kw: groups.append(kw.get("core_groups")) or
                        real_enable(model, **kw))
    offloaded = []
    real_offload = offload.enable
    monkeypatch.setattr(offload, "enable", lambda model, **kw: offloaded.append(real_offload(model, **kw)) or
                        offloaded[-1])
    common = ["trainer.max_steps=3", "trainer.compile_layers=true", "trainer.pack_length=1024", "lora.lora_dropout=0"]
    other = tiny_train_outputs.parent / "long"
    shutil.copytree(tiny_train_outputs / "data", other / "data")
    before = functorch_config.activation_memory_budget  # restored by hand (see the test above)
    try:
        plain = stage.run(_cfg(tiny_train_outputs, mlflow_experiment, *common))
        long = stage.run(_cfg(other, mlflow_experiment, *common, "trainer.offload_checkpoints=true",
                              "trainer.activation_memory_budget=0.3", "trainer.gdn_core_groups=2"))
        assert functorch_config.activation_memory_budget == 0.3
    finally:
        functorch_config.activation_memory_budget = before
    assert groups == [0, 2] and offloaded == [4]  # the tiny model's 4 decoder layers offloaded in the second run
    assert long.steps == plain.steps == 3
    torch.testing.assert_close(torch.tensor(long.losses), torch.tensor(plain.losses), rtol=1e-4, atol=1e-4)
    assert plain.losses[-1] < plain.losses[0]
