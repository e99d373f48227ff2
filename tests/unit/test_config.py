"""The one Hydra tree: every primary config x every experiment composes, validates and binds its targets;
bad overrides fail with one line that names the key and the allowed values."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from cardforge.core.config.compose import ConfigError, compose, expand_sweeps

CONF = Path(__file__).resolve().parents[2] / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "base")
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
SOURCES = "builtin, humaneval, bfcl:NAME (a BFCL set or question file), proof:SPLIT:N or jsonl:PATH"


def test_tree_has_every_stage_and_preset():
    assert set(PRIMARY) == {"data", "train", "merge", "mtp", "quant", "serve", "eval", "card", "release", "pipeline"}
    assert {"tiny", "smollm2_demo", "qwen36_27b_card"} <= set(EXPERIMENTS)
    for group in ["model", "teacher", "data", "lora", "trainer", "mtp", "quant", "serve", "eval", "logger",
                  "experiment", "paths", "hydra/launcher"]:
        assert list((CONF / group).glob("*.yaml")), f"conf/{group} is empty"


def _targets(node, path=""):
    if isinstance(node, (DictConfig, ListConfig)) and (node._is_interpolation() or node._is_none()):
        return  # `${other.key}` points at a node walked where it lives; a null list holds nothing
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for k in node:
            yield from _targets(node._get_node(k), f"{path}.{k}" if path else str(k))
    elif isinstance(node, ListConfig):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def _import(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("primary", PRIMARY)
def test_compose_validate_and_bind_targets(primary, experiment):
    cfg = compose(primary, [f"experiment={experiment}"])
    assert cfg.stage == primary
    assert cfg.experiment == experiment
    targets = dict(_targets(cfg))
    assert "lora" in targets and "logger" in targets
    for path, node in targets.items():
        obj = _import(node._target_)
        kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in HYDRA_KEYS}
        try:
            inspect.signature(obj).bind(**kwargs)
        except TypeError as e:
            pytest.fail(f"{primary}/{experiment}: {path}._target_={node._target_} does not take {sorted(kwargs)}: {e}")


def test_hydra_callback_target_binds():
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hcompose("train", return_hydra_config=True)
    for name, node in cfg.hydra.callbacks.items():
        obj = _import(node._target_)
        inspect.signature(obj).bind(**{k: v for k, v in node.items() if k not in HYDRA_KEYS})


def test_card_preset_has_the_seed_card_settings():
    cfg = compose("pipeline", ["experiment=qwen36_27b_card"])
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (64, 128, 0.05)
    assert {"in_proj_qkv", "in_proj_z", "out_proj", "q_proj", "down_proj"} <= set(cfg.lora.target_modules)
    assert cfg.trainer.optimizer.value == "paged_adamw_8bit"
    assert (cfg.trainer.scheduler.value, cfg.trainer.warmup_ratio, cfg.trainer.max_epochs) == ("cosine", 0.03, 1)
    assert [(t.tier.value, t.imatrix) for t in cfg.quant.gguf_tiers] == [
        ("Q4_K_M", True), ("Q5_K_M", True), ("Q6_K", True), ("Q8_0", False)]
    assert cfg.quant.fp8_block == 128 and list(cfg.quant.nvfp4) == ["w4a16", "w4a4"]
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.concurrency, cfg.eval.timeout_s) == (0.6, 0.95, 4, 1800)
    assert cfg.eval.stream is True and cfg.eval.max_tokens == 32768
    assert cfg.data.num_samples == 1842 and cfg.data.tool_results.value == "simulate"
    assert cfg.model.path.endswith("Qwen3.6-27B") and cfg.model.has_mtp


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=nope", "model=nope: no such option in 'model'; choose one of: qwen36_27b, smollm2_135m, smollm2_135m_tools, tiny_qwen35_mtp, tiny_qwen36_vl_mtp"),
        ("experiment=big", "experiment=big: no such option in 'experiment'; choose one of: distill_proof, qwen36_27b_card, smollm2_demo, tiny"),
        ("trainer.optimizer=sgd", "trainer.optimizer: Invalid value 'sgd', expected one of [paged_adamw_8bit, adamw]"),
        ("serve.backend=tgi", "serve.backend: Invalid value 'tgi', expected one of [llama_cpp, vllm, sglang]"),
        ("lora.r=big", "lora.r: Value 'big' of type 'str' could not be converted to Integer"),
        ("data.judge=true", "data.judge=true needs data.tool_results=execute (a judge needs real results)"),
        ("serve.served_model_name=org/name", "serve.served_model_name must not contain '/': 'org/name'"),
        ("trainer.warmup_ratio=1.5", "trainer.warmup_ratio must be in [0, 1), got 1.5"),
        # values other packages own, checked at composition (test_config_allowed.py keeps the lists in step)
        ("force=[trian]", "force: unknown stage 'trian'; choose one of: models, data, train, merge, mtp, quant, "
                          "eval, card, all"),
        ("until=trian", "until: unknown stage 'trian'; choose one of: models, data, train, merge, mtp, quant, "
                        "eval, card"),
        ("force=[eval,Train]", "force: unknown stage 'Train'; choose one of: models, data, train, merge, mtp, quant, "
                               "eval, card, all"),
        ("eval.suites=[mmlu,nope]", "eval.suites: unknown suite 'nope'; choose one of: gpqa_diamond, mmlu, humaneval, "
                                    "coding, bfcl, agentic, proof"),
        ("eval.quant_tier=Q9_X", "eval.quant_tier: unknown GGUF tier 'Q9_X'; choose one of: BF16, Q8_0, Q6_K, "
                                 "Q5_K_M, Q4_K_M, Q5_0, Q4_0"),
        ("mtp.bench_tier=Q9", "mtp.bench_tier: unknown GGUF tier 'Q9'; choose one of: BF16, Q8_0, Q6_K, Q5_K_M, "
                              "Q4_K_M, Q5_0, Q4_0"),
        ("data.sources=[nope]", f"data.sources: unknown source 'nope'; use {SOURCES}"),
        ("data.sources=[builtin,bfcl:]", f"data.sources: unknown source 'bfcl:'; use {SOURCES}"),
        ("data.sources=[jsonl]", f"data.sources: unknown source 'jsonl'; use {SOURCES}"),
        ("data.sources=[humaneval:x]", f"data.sources: unknown source 'humaneval:x'; use {SOURCES}"),
        ("mtp.sources=[nope]", f"mtp.sources: unknown source 'nope'; use {SOURCES}"),
        ("trainer.activation_memory_budget=0.1", "trainer.activation_memory_budget needs trainer.compile_layers=true "
                                                 "(the budget is applied by torch.compile's partitioner)"),
        ("trainer.pad_to_multiple_of=0", "trainer.pad_to_multiple_of must be >= 1 (or null), got 0"),
        ("trainer.precision=64-weird", "trainer.precision: unknown Lightning precision '64-weird'; choose one of: "
                                       "transformer-engine, transformer-engine-float16, 16-true, 16-mixed, bf16-true, "
                                       "bf16-mixed, 32-true, 64-true, 64, 32, 16, bf16"),
    ],
)
def test_invalid_override_is_one_clear_line(override, expected):
    with pytest.raises(ConfigError) as e:
        compose("train", ["data=react_simulate", override])
    assert str(e.value) == expected


@pytest.mark.parametrize("overrides, expected", [
    (["trainer=fsdp1", "trainer.compile_layers=true"],
     "trainer.compile_layers=true is not supported with trainer.strategy=fsdp1; use trainer.strategy=fsdp (FSDP2)"),
    (["trainer=gpu_card", "trainer.kernels=transformers"], "trainer.compile_layers=true needs trainer.kernels=cardforge"),
])
def test_compile_layers_conflicts_are_one_clear_line(overrides, expected):
    with pytest.raises(ConfigError) as e:
        compose("train", overrides)
    assert str(e.value) == expected
    cfg = compose("train", ["trainer=gpu_card", "trainer.activation_memory_budget=0.1"])  # the documented preset
    assert cfg.trainer.compile_layers and cfg.trainer.tf32 and cfg.trainer.activation_memory_budget == 0.1


@pytest.mark.parametrize("overrides, expected", [
    (["trainer.gdn_core_groups=-1"], "trainer.gdn_core_groups must be >= 0 (0: off), got -1"),
    (["trainer.gdn_core_groups=4", "trainer.kernels=transformers"],
     "trainer.gdn_core_groups needs trainer.kernels=cardforge (it recomputes cardforge's Gated DeltaNet core)"),
    (["trainer.offload_checkpoints=true", "trainer.gradient_checkpointing=false"],
     "trainer.offload_checkpoints needs trainer.kernels=cardforge and trainer.gradient_checkpointing=true (or "
     "trainer.activation_memory_budget, which then applies to each layer's recompute)"),
    (["trainer=gpu_card_long", "trainer.compile_layers=false"],
     "trainer.activation_memory_budget needs trainer.compile_layers=true (the budget is applied by torch.compile's "
     "partitioner)"),
])
def test_long_row_settings_conflicts_are_one_clear_line(overrides, expected):
    with pytest.raises(ConfigError) as e:
        compose("train", overrides)
    assert str(e.value) == expected


def test_the_card_trains_its_32k_rows_with_the_measured_long_row_setting():
    """issue #20: the card's preset packs rows of data.max_seq_len tokens and uses what made 32k rows fit on one
    80 GiB GPU in the bench (offloaded checkpoints, budget 0.3 on each layer's recompute, GDN core in 4 groups)."""
    t = compose("train", ["experiment=qwen36_27b_card"]).trainer
    assert (t.pack_length, t.offload_checkpoints, t.activation_memory_budget, t.gdn_core_groups) == (32768, True, 0.3, 4)
    assert t.compile_layers and t.tf32 and t.kernels == "cardforge"
    t = compose("train", ["experiment=qwen36_27b_card", "data.max_seq_len=16384"]).trainer
    assert t.pack_length == 16384  # rows follow the data's longest sample


@pytest.mark.parametrize("override", [
    "force=[all]", "force=[models,data,train,merge,mtp,quant,eval,card]", "force=[]",
    "eval.suites=[gpqa_diamond,mmlu,humaneval,coding,bfcl,agentic]", "eval.quant_tier=Q8_0", "mtp.bench_tier=Q4_K_M",
    "data.sources=[builtin,humaneval,bfcl:simple_python,jsonl:/data/tasks.jsonl]",
    "mtp.sources=[bfcl:/x/BFCL_v4_simple.json]", "trainer.precision=bf16-mixed", "trainer.precision=32",
])
def test_valid_values_of_the_checked_keys_compose(override):
    compose("pipeline", ["data=react_simulate", override])


def test_every_preset_passes_the_value_checks():
    for experiment in EXPERIMENTS:
        cfg = compose("pipeline", [f"experiment={experiment}"])
        assert cfg.trainer.precision and cfg.eval.suites and cfg.data.sources


def test_unknown_key_lists_the_allowed_keys():
    with pytest.raises(ConfigError) as e:
        compose("train", ["trainer.learning_rate=1e-4"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("trainer.learning_rate: no such key; keys in 'trainer': optimizer, lr, ")


def test_cli_bad_override_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "cardforge.train", "lora.r=8", "trainer.optimizer=sgd"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["cardforge train: config error: trainer.optimizer: Invalid value 'sgd', "
                     "expected one of [paged_adamw_8bit, adamw]"]


@pytest.mark.parametrize("override, line", [
    ("force=[trian]", "force: unknown stage 'trian'; choose one of: models, data, train, merge, mtp, quant, eval, "
                      "card, all"),
    ("eval.suites=[nope]", "eval.suites: unknown suite 'nope'; choose one of: gpqa_diamond, mmlu, humaneval, coding, "
                           "bfcl, agentic, proof"),
])
def test_cli_pipeline_refuses_a_bad_value_before_starting(override, line, tmp_path):
    # until=models bounds the damage if the check ever slipped: only the (cached) models stage would run
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    proc = subprocess.run([sys.executable, "-m", "cardforge.pipeline", "until=models", override,
                           f"paths.outputs={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"cardforge pipeline: config error: {line}"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()  # nothing started


def test_cli_multirun_checks_every_job_before_launching():
    proc = subprocess.run([sys.executable, "-m", "cardforge.train", "-m", "model=tiny_qwen35_mtp,nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "model=nope: no such option in 'model'" in proc.stderr


def test_unbuilt_stage_says_so_and_exits_3(capsys):
    from cardforge.core.cli import StageNotImplemented, not_implemented

    with pytest.raises(StageNotImplemented) as e:
        not_implemented("card", 9)(compose("card"))
    assert e.value.code == 3
    assert "cardforge card: this stage is not implemented yet (tracked as issue #9)" in capsys.readouterr().err


def test_expand_sweeps():
    jobs = expand_sweeps(["lora.r=8,16", "trainer.lr=1e-4", "model=tiny_qwen35_mtp,smollm2_135m"])
    assert len(jobs) == 4
    assert ["lora.r=8", "trainer.lr=1e-4", "model=tiny_qwen35_mtp"] in jobs
    assert ["lora.r=16", "trainer.lr=1e-4", "model=smollm2_135m"] in jobs
