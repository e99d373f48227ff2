"""Merge: base + adapter -> BF16 safetensors with the base's MTP head unchanged; merged logits equal
base+adapter logits on a probe batch."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cardforge.core.models import mtp

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
           "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"]


@pytest.fixture(scope="module")
def random_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with non-zero B (PEFT's default init makes B = 0, i.e. a no-op merge)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(path)
    return path


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def test_merged_logits_equal_base_plus_adapter(tiny_model_dir, random_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cardforge.train.merge.stage import merge_adapter

    ids = torch.tensor([[248045, 846, 198, 3710, 369, 220, 18, 5346, 220, 22, 30, 248046, 198, 248045, 74455, 198],
                        [760, 2542, 369, 220, 16, 15, 13, 248046, 198, 248045, 846, 198, 3710, 369, 220, 22]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_logits = _logits(base, ids)
    want = _logits(PeftModel.from_pretrained(base, str(random_adapter)).eval(), ids)
    adapter_effect = (want - base_logits).abs().max().item()
    assert adapter_effect > 0.05  # the probe sees the adapter, so equality below means something

    bf16 = merge_adapter(tiny_model_dir, random_adapter, tmp_path / "bf16")
    merged = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    diff16 = (_logits(merged, ids) - want).abs().max().item()
    print(f"adapter effect {adapter_effect:.4f}  bf16 merge diff {diff16:.2e}")
    assert diff16 < adapter_effect / 10  # bf16 rounding of W + BA only
    # weight by weight: PEFT's own fold (fp32) rounded once to the stored bf16
    peft_merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), str(random_adapter)
    ).merge_and_unload().state_dict()
    ours = merged.state_dict()
    for name in ("model.layers.3.self_attn.q_proj.weight", "model.layers.0.linear_attn.in_proj_qkv.weight",
                 "model.layers.2.mlp.down_proj.weight"):
        torch.testing.assert_close(ours[name], peft_merged[name].to(torch.bfloat16).float(), rtol=0, atol=1e-6)

    # stored BF16, tokenizer + chat template beside it, MTP head byte-identical to the base's
    cfg = json.loads((bf16 / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        assert (bf16 / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    base_manifest, merged_manifest = mtp.mtp_manifest(tiny_model_dir), mtp.mtp_manifest(bf16)
    assert len(base_manifest["tensors"]) == 15
    assert merged_manifest["tensors"] == base_manifest["tensors"]
    index = json.loads((bf16 / mtp.INDEX).read_text())["weight_map"]
    assert index["mtp.fc.weight"] == mtp.MTP_SHARD and index["lm_head.weight"] != mtp.MTP_SHARD


@pytest.fixture(scope="module")
def vl_adapter(tiny_vl_model_dir, tmp_path_factory):
    """An adapter trained the way the train stage trains the VL base: on its text view (Qwen3_5ForCausalLM)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_vl_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    path = tmp_path_factory.mktemp("vl_adapter") / "adapter"
    model.save_pretrained(path)
    return path


def _part_hashes(d):
    """sha256 per tensor, by name, over every shard."""
    import hashlib

    from safetensors import safe_open

    index = json.loads((d / mtp.INDEX).read_text())["weight_map"]
    out = {}
    for shard in sorted(set(index.values())):
        with safe_open(str(d / shard), "pt") as f:
            for n in f.keys():  # noqa: SIM118
                t = f.get_tensor(n)
                out[n] = (str(t.dtype), tuple(t.shape), hashlib.sha256(t.view(-1).view(torch.uint8).numpy()).hexdigest())
    return out, index


def test_vl_merge_keeps_the_real_layout_tower_and_head_byte_identical(tiny_vl_model_dir, vl_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cardforge.train.merge.stage import merge_adapter

    report: dict = {}
    out = merge_adapter(tiny_vl_model_dir, vl_adapter, tmp_path / "merged", report=report)
    base, base_index = _part_hashes(tiny_vl_model_dir)
    merged, merged_index = _part_hashes(out)
    assert merged_index == base_index and sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in tiny_vl_model_dir.iterdir() if p.name != "cardforge_manifest.json")
    assert {n: v[:2] for n, v in merged.items()} == {n: v[:2] for n, v in base.items()}  # names, dtypes, shapes
    changed = {n for n in base if base[n] != merged[n]}
    # exactly the LoRA'd language-model Linears changed: 1 attention layer x 4 + 4 MLPs x 3 + 3 GDN x 5
    assert len(changed) == report["adapted"] == 4 + 12 + 15
    assert all(n.startswith("model.language_model.layers.") for n in changed)
    for prefix in ("model.visual.", "mtp.", "lm_head.", "model.language_model.embed_tokens."):
        part = [n for n in base if n.startswith(prefix)]
        assert part and all(base[n] == merged[n] for n in part), prefix
    assert (out / mtp.MTP_SHARD).read_bytes() == (tiny_vl_model_dir / mtp.MTP_SHARD).read_bytes()
    for name in ("config.json", "preprocessor_config.json", "chat_template.jinja", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tiny_vl_model_dir / name).read_bytes(), name
    assert set(report["sha256_unchanged"]) == {"language_model", "visual", "mtp", "lm_head"}
    # the adapted weights are PEFT's fold of the same adapter, under the real names
    want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_vl_model_dir, dtype=torch.float32),
                                     str(vl_adapter)).merge_and_unload().state_dict()
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    for name in ("model.layers.3.self_attn.q_proj.weight", "model.layers.1.linear_attn.in_proj_a.weight"):
        torch.testing.assert_close(got[name], want[name].to(torch.bfloat16).float(), rtol=0, atol=1e-6)


def test_merge_refuses_an_adapter_for_another_model(tiny_vl_model_dir, tmp_path):
    from safetensors.torch import save_file

    from cardforge.train.merge.stage import MergeError, merge_adapter

    bad = tmp_path / "adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 256),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(512, 2)},
              str(bad / "adapter_model.safetensors"))
    with pytest.raises(MergeError, match="layers.0.self_attn.q_proj has no weight in the base"):
        merge_adapter(tiny_vl_model_dir, bad, tmp_path / "out")  # layer 0 is a GDN layer there
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": True}))
    with pytest.raises(MergeError, match="use_dora not supported"):
        merge_adapter(tiny_vl_model_dir, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_fails_loudly_when_the_head_is_lost(tiny_model_dir, tmp_path):
    from cardforge.train.merge.stage import MtpHeadLost, check_mtp

    headless = tmp_path / "headless"
    headless.mkdir()
    shutil.copyfile(tiny_model_dir / "model.safetensors", headless / "model.safetensors")
    with pytest.raises(MtpHeadLost, match="did not survive the merge .missing 15 tensors"):
        check_mtp(tiny_model_dir, headless)

    # a head with one tensor altered is caught too (sha256 per tensor)
    changed = tmp_path / "changed"
    changed.mkdir()
    shutil.copyfile(tiny_model_dir / "model.safetensors", changed / "model.safetensors")
    head = mtp.read_mtp_tensors(tiny_model_dir)
    head["mtp.fc.weight"] = head["mtp.fc.weight"] + 1
    mtp.write_mtp_tensors(changed, head)
    with pytest.raises(MtpHeadLost, match=r"missing 0 tensors e.g. \[\], changed 1 e.g. \[.mtp.fc.weight.\]"):
        check_mtp(tiny_model_dir, changed)


def test_merge_stage_run_logs_manifests(tiny_model_dir, random_adapter, tmp_path, mlflow_uri, mlflow_experiment):
    import mlflow

    from cardforge.core.config.compose import compose
    from cardforge.train.merge import stage

    out = tmp_path / "artifacts"
    shutil.copytree(random_adapter, out / "train" / "adapter")
    cfg = compose("merge", [f"paths.outputs={out}", f"logger.experiment_name={mlflow_experiment}"])
    result = stage.run(cfg)
    assert result.mtp_manifest_match and result.mtp_tensors == 15
    assert (out / "merge" / "model" / "model.safetensors").is_file()
    run = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")[0]
    assert run.data.tags["merge.mtp_manifest_match"] == "true"
    from cardforge.core.chat.template import checkpoint_template, template_identity

    # the base's chat template is carried over byte for byte, and its identity is tagged
    assert checkpoint_template(out / "merge" / "model") == checkpoint_template(result.base_dir)
    assert run.data.tags["merge.chat_template_sha256"] == template_identity(
        checkpoint_template(result.base_dir))["chat_template_sha256"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"mtp_manifest.base.json", "mtp_manifest.merged.json"} <= arts


def test_merge_without_adapter_says_run_train_first(tmp_path):
    from cardforge.core.config.compose import compose
    from cardforge.train.merge import stage
    from cardforge.train.stage import MissingInputError

    with pytest.raises(MissingInputError, match="run the train stage first"):
        stage.run(compose("merge", [f"paths.outputs={tmp_path}"]))
