"""The vLLM / SGLang context length never exceeds what the served model allows: serve.max_model_len (32768 by
default, sized for the 27B card) is lowered to the checkpoint's max_position_embeddings, with a note, in the
engine commands the serve stage runs and in those the card publishes (SmolLM2-135M: 8192)."""

from __future__ import annotations

import json
import shlex

from cardforge.core.artifacts import Outputs
from cardforge.core.config.compose import compose
from cardforge.serve.commands import inference_commands
from cardforge.serve.launchers import build_command
from cardforge.serve.stage import serve_options


def _checkpoint(path, **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], **config}))
    return path


def _cmd(backend, model):
    return shlex.join(build_command(model, serve_options(compose("serve", [f"serve={backend}"]))))


def test_a_local_checkpoint_shorter_than_the_setting_is_served_at_its_own_length(tmp_path, capsys):
    small = _checkpoint(tmp_path / "smollm2", max_position_embeddings=8192)
    assert " --max-model-len 8192 " in _cmd("vllm", small)
    assert " --context-length 8192 " in _cmd("sglang", small)
    err = capsys.readouterr().err
    assert (f"[serve] serve.max_model_len=32768 is longer than the model's context (8192, max_position_embeddings "
            f"in {small}/config.json): using 8192") in err


def test_a_longer_model_or_an_hf_id_keeps_the_setting(tmp_path, capsys):
    vl = _checkpoint(tmp_path / "vl", text_config={"max_position_embeddings": 262144})  # Qwen3.6's layout
    for model in (vl, "Qwen/Qwen3.6-27B", tmp_path / "missing"):
        assert " --max-model-len 32768 " in _cmd("vllm", model), model
        assert " --context-length 32768 " in _cmd("sglang", model), model
    assert capsys.readouterr().err == ""


def test_context_limit_counts_an_extending_rope_scaling():
    from cardforge.serve.launchers import context_limit

    assert context_limit({"max_position_embeddings": 32768, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}) \
        == 131072
    # llama3's config already states the extended length
    assert context_limit({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}) \
        == 131072
    assert context_limit({"text_config": {"max_position_embeddings": 262144}}) == 262144
    assert context_limit({}) is None and context_limit(None) is None


def test_the_distill_proof_card_serves_smollm2_at_its_context(tmp_path):
    """The card's vLLM / SGLang lines for the distill_proof preset (SmolLM2-135M, 8192 positions): the merged
    checkpoint's config decides, even though the commands name the release dir, which does not exist yet."""
    cfg = compose("pipeline", ["experiment=distill_proof", f"paths.outputs={tmp_path}"])
    _checkpoint(Outputs(cfg).merge.model, max_position_embeddings=8192)
    cmds = inference_commands(cfg)
    assert " --max-model-len 8192 " in cmds["vllm"] and " --context-length 8192 " in cmds["sglang"]
    assert f" {tmp_path}/release/main " in cmds["vllm"]  # not the merge dir the length was read from
