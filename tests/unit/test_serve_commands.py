"""The exact engine command lines the serve stage runs and the card publishes, pinned per backend."""

from __future__ import annotations

import json
import shlex

import pytest

from cardforge.core.config.compose import ConfigError, compose
from cardforge.serve.__main__ import rewrite_shorthands
from cardforge.serve.commands import inference_commands, model_ref
from cardforge.serve.launchers import build_command
from cardforge.serve.stage import serve_options

SPEC = "'{\"method\":\"mtp\",\"num_speculative_tokens\":3}'"


def cmd(overrides, model, **kw) -> str:
    cfg = compose("serve", overrides)
    return shlex.join(build_command(model, serve_options(cfg), **kw))


def test_llama_cpp_command_with_mtp():
    assert cmd([], "/m/tiny.gguf", port=8080) == (
        "llama-server -m /m/tiny.gguf --host 127.0.0.1 --port 8080 --alias tiny-qwen36-vl-mtp --jinja -c 4096 "
        "--metrics --no-webui --spec-type draft-mtp --spec-draft-n-max 3 --spec-draft-p-min 0.0")


def test_llama_cpp_command_mtp_off_threads_ctx():
    got = cmd(["serve.mtp.enabled=false", "serve.threads=2", "serve.ctx_size=8192", "serve.mtp.p_min=0.5"],
              "/m/x.gguf", port=9)
    assert got == ("llama-server -m /m/x.gguf --host 127.0.0.1 --port 9 --alias tiny-qwen36-vl-mtp --jinja -c 8192 "
                   "--metrics --no-webui -t 2")


def test_llama_cpp_mtp_knobs():
    got = cmd(["serve.mtp.n_max=2", "serve.mtp.p_min=0.75"], "/m/x.gguf", port=1)
    assert got.endswith("--spec-type draft-mtp --spec-draft-n-max 2 --spec-draft-p-min 0.75")


def test_vllm_command():
    assert cmd(["serve=vllm", "experiment=qwen36_27b_card"], "Qwen/Qwen3.6-27B") == (
        "vllm serve Qwen/Qwen3.6-27B --served-model-name Qwen3.6-27B --host 127.0.0.1 --port 8000 "
        "--tensor-parallel-size 1 --max-model-len 32768 --reasoning-parser qwen3 --enable-auto-tool-choice "
        f"--tool-call-parser qwen3_xml --speculative-config {SPEC}")


def test_vllm_tp_quantization_and_mtp_off():
    got = cmd(["serve=vllm", "serve.tensor_parallel_size=4", "serve.max_model_len=65536",
               "serve.quantization=fp8", "serve.mtp.enabled=false", "serve.model_path=/ckpt/Qwen3.6-27B-FP8"],
              "/ckpt/Qwen3.6-27B-FP8")
    assert got == ("vllm serve /ckpt/Qwen3.6-27B-FP8 --served-model-name Qwen3.6-27B-FP8 --host 127.0.0.1 "
                   "--port 8000 --tensor-parallel-size 4 --max-model-len 65536 --reasoning-parser qwen3 "
                   "--enable-auto-tool-choice --tool-call-parser qwen3_xml --quantization fp8")


def test_sglang_command():
    assert cmd(["serve=sglang", "experiment=qwen36_27b_card"], "Qwen/Qwen3.6-27B") == (
        "python -m sglang.launch_server --model-path Qwen/Qwen3.6-27B --served-model-name Qwen3.6-27B "
        "--host 127.0.0.1 --port 30000 --tp-size 1 --context-length 32768 --reasoning-parser qwen3 "
        "--tool-call-parser qwen3_coder --speculative-algorithm EAGLE --speculative-num-steps 3 "
        "--speculative-eagle-topk 1 --speculative-num-draft-tokens 4")


def test_served_name_never_has_slashes():
    assert "--served-model-name org--name" in cmd(["serve=vllm", "serve.served_model_name=org--name"], "x")
    with pytest.raises(ConfigError, match="served_model_name must not contain '/'"):
        compose("serve", ["serve.served_model_name=org/name"])
    assert "--served-model-name Qwen3.6-27B" in cmd(["serve=vllm", "serve.model_path=Qwen/Qwen3.6-27B"],
                                                    "Qwen/Qwen3.6-27B")


def test_bad_mtp_settings_name_the_key():
    with pytest.raises(ConfigError, match="serve.mtp.n_max"):
        compose("serve", ["serve.mtp.n_max=0"])
    with pytest.raises(ConfigError, match="serve.mtp.p_min"):
        compose("serve", ["serve.mtp.p_min=1.5"])


def test_inference_commands_for_the_card():
    cmds = inference_commands(compose("serve", ["experiment=qwen36_27b_card"]))
    assert set(cmds) == {"llama_cpp", "vllm", "sglang"}
    assert cmds["llama_cpp"].startswith("llama-server -m Qwen3.6-27B-Q4_K_M.gguf --host 127.0.0.1 --port 8080 ")
    assert "--spec-type draft-mtp --spec-draft-n-max 3" in cmds["llama_cpp"]
    # vLLM/SGLang serve the distilled model (no repo configured: the dir `make release` assembles), not the base
    assert cmds["vllm"].startswith("vllm serve ./artifacts/qwen36_27b_card/release/main ") and SPEC in cmds["vllm"]
    assert "--model-path ./artifacts/qwen36_27b_card/release/main " in cmds["sglang"]
    assert "--tool-call-parser qwen3_coder --speculative-algorithm EAGLE" in cmds["sglang"]
    # smollm2 (llama arch, no MTP head): no speculation anywhere
    demo = inference_commands(compose("serve", ["experiment=smollm2_demo"]))
    assert not any("spec" in c for c in demo.values())


def test_cli_shorthands():
    assert rewrite_shorthands(["backend=vllm", "model=Qwen/Qwen3.6-27B", "model=smollm2_135m", "x.y=1"]) == [
        "serve=vllm", "serve.model_path=Qwen/Qwen3.6-27B", "model=smollm2_135m", "x.y=1"]


NVFP4_VLLM = ("vllm serve /ckpt/Distill-NVFP4 --served-model-name Distill-NVFP4 --host 127.0.0.1 --port 8000 "
              "--tensor-parallel-size 1 --max-model-len 32768 --reasoning-parser qwen3 --enable-auto-tool-choice "
              f"--tool-call-parser qwen3_xml --speculative-config {SPEC} --quantization modelopt_fp4")
NVFP4_SGLANG = ("python -m sglang.launch_server --model-path /ckpt/Distill-NVFP4 --served-model-name Distill-NVFP4 "
                "--host 127.0.0.1 --port 30000 --tp-size 1 --context-length 32768 --reasoning-parser qwen3 "
                "--tool-call-parser qwen3_coder --speculative-algorithm EAGLE --speculative-num-steps 3 "
                "--speculative-eagle-topk 1 --speculative-num-draft-tokens 4 --quantization modelopt_fp4")


def test_nvfp4_commands_pinned():
    """Our NVFP4 checkpoints are in the ModelOpt layout: vLLM and SGLang both call that `modelopt_fp4`."""
    for group, want in (("vllm", NVFP4_VLLM), ("sglang", NVFP4_SGLANG)):
        got = cmd([f"serve={group}", "experiment=qwen36_27b_card", "serve.quantization=modelopt_fp4",
                   "serve.model_path=/ckpt/Distill-NVFP4", "serve.served_model_name=Distill-NVFP4"],
                  "/ckpt/Distill-NVFP4")
        assert got == want


@pytest.mark.parametrize("tier", ["w4a16", "w4a4"])
def test_nvfp4_flag_read_from_the_quant_stages_checkpoint(tmp_path, tier):
    """A local checkpoint with the quant stage's hf_quant_config.json gets --quantization modelopt_fp4 without
    serve.quantization; FP8 block-128 (quantization_config in config.json, read by the engines) and BF16 get none."""
    from cardforge.quant.fp8 import quantization_config
    from cardforge.quant.nvfp4 import hf_quant_config

    nvfp4, fp8, bf16 = tmp_path / f"Distill-NVFP4-{tier}", tmp_path / "Distill-FP8", tmp_path / "Distill"
    for d in (nvfp4, fp8, bf16):
        d.mkdir()
    (nvfp4 / "hf_quant_config.json").write_text(json.dumps(hf_quant_config(tier, ["lm_head"], "t")))
    (fp8 / "config.json").write_text(json.dumps({"quantization_config": quantization_config(["lm_head"])}))
    (bf16 / "config.json").write_text("{}")
    for group in ("vllm", "sglang"):
        assert cmd([f"serve={group}"], str(nvfp4)).endswith(" --quantization modelopt_fp4")
        assert "--quantization" not in cmd([f"serve={group}"], str(fp8))
        assert "--quantization" not in cmd([f"serve={group}"], str(bf16))
        assert cmd([f"serve={group}", "serve.quantization=fp8"], str(nvfp4)).endswith(" --quantization fp8")


def test_engine_commands_point_at_the_distilled_model_never_the_base(tmp_path):
    base = ["experiment=qwen36_27b_card"]
    for overrides, want in [
        (["card.hf_repo=me/Qwen3.6-27B-Distill"], "me/Qwen3.6-27B-Distill"),
        (["release.hf_namespace=org"], "org/Qwen3.6-27B-DSV4Pro-Thinking-Distill"),
        (["release.hf_namespace=org", "release.name=Named"], "org/Named"),
        ([f"paths.outputs={tmp_path}/out"], f"{tmp_path}/out/release/main"),  # outside the checkout: absolute
        ([f"release.out_dir={tmp_path}/rel"], f"{tmp_path}/rel/main"),
        ([], "./artifacts/qwen36_27b_card/release/main"),
    ]:
        cfg = compose("serve", base + overrides)
        for backend in ("vllm", "sglang"):
            assert model_ref(cfg, backend) == want, (overrides, backend)
        cmds = inference_commands(cfg)
        assert f" {want} " in cmds["vllm"] and f" {want} " in cmds["sglang"]
        assert str(cfg.model.path) not in cmds["vllm"] + cmds["sglang"]  # Qwen/Qwen3.6-27B: the base
        # and clients see the distilled model's name, never the base's
        name = {"card.hf_repo=me/Qwen3.6-27B-Distill": "Qwen3.6-27B-Distill", "release.name=Named": "Named"}.get(
            overrides[-1] if overrides else "", "Qwen3.6-27B-DSV4Pro-Thinking-Distill")
        assert f"--served-model-name {name} " in cmds["vllm"] and f"--served-model-name {name} " in cmds["sglang"]
    explicit = compose("serve", base + ["serve.model_path=/ckpt/mine"])
    assert model_ref(explicit, "vllm") == "/ckpt/mine"


def test_docs_and_readme_show_the_generated_commands(repo_root):
    cmds = inference_commands(compose("serve", ["experiment=qwen36_27b_card"]))
    for doc in ("docs/serving.md", "README.md"):
        text = (repo_root / doc).read_text()
        for backend, line in cmds.items():
            assert f"```bash\n{line}\n```" in text, f"{doc}: the {backend} command is not the generated one:\n{line}"
