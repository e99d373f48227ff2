"""The serve stage's vLLM path with an engine actually installed: a stub `vllm` executable on PATH (a small
Python server answering /health and /v1/models on the port it is given) is run by `cardforge.serve.stage`
exactly as vLLM would be: the NVFP4 flag from the checkpoint, the log file, the MLflow record, the port
and the process freed after the stop; and which model it serves when none is given (never the base)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from cardforge.core.config.compose import compose
from cardforge.core.errors import UserError
from cardforge.serve.process import free_port
from cardforge.serve.stage import run

STUB = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    args = sys.argv[1:]
    arg = lambda name: args[args.index(name) + 1]
    print("stub-vllm pid", os.getpid(), "argv", json.dumps(args), flush=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                body = b""
            elif self.path == "/v1/models":
                body = json.dumps({{"object": "list", "data": [{{"id": arg("--served-model-name"),
                                                               "object": "model", "root": arg("serve")}}]}}).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *a):
            print("stub-vllm", fmt % a, flush=True)

    HTTPServer((arg("--host"), int(arg("--port"))), Handler).serve_forever()
    """)


@pytest.fixture()
def stub_vllm(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "vllm"
    exe.write_text(STUB.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return exe


def nvfp4_checkpoint(path: Path) -> Path:
    """A checkpoint directory with the quant stage's own NVFP4 metadata (ModelOpt layout)."""
    from cardforge.quant.nvfp4 import hf_quant_config

    path.mkdir(parents=True)
    qcfg = hf_quant_config("w4a16", ["lm_head"], "test")
    (path / "hf_quant_config.json").write_text(json.dumps(qcfg))
    (path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "modelopt",
                                                                          **qcfg["quantization"]}}))
    return path


def port_is_free(port: int) -> bool:
    """Nobody listens there any more: connecting is refused and a new server can bind and listen on it
    (SO_REUSEADDR, as uvicorn/vLLM set it: it skips the TIME_WAIT of closed connections, never a listener)."""
    with socket.socket() as c:
        if c.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


def stage_cfg(tmp_path, experiment: str, *overrides: str):
    return compose("serve", ["serve=vllm", "serve.keep_running=false", "serve.startup_timeout_s=60",
                             f"paths.outputs={tmp_path / 'out'}", f"logger.experiment_name={experiment}", *overrides])


def test_stage_runs_the_installed_engine_and_frees_its_port(stub_vllm, tmp_path, mlflow_uri, mlflow_experiment):
    model = nvfp4_checkpoint(tmp_path / "Distill-NVFP4")
    port = free_port()
    cfg = stage_cfg(tmp_path, mlflow_experiment, f"serve.model_path={model}", f"serve.port={port}")
    result = run(cfg)
    assert result.ran and result.base_url == f"http://127.0.0.1:{port}" and result.startup_s < 60
    assert shlex.join(result.command) == (
        f"vllm serve {model} --served-model-name Distill-NVFP4 --host 127.0.0.1 --port {port} "
        "--tensor-parallel-size 1 --max-model-len 32768 --reasoning-parser qwen3 --enable-auto-tool-choice "
        "--tool-call-parser qwen3_xml --speculative-config '{\"method\":\"mtp\",\"num_speculative_tokens\":3}' "
        "--quantization modelopt_fp4")
    assert result.served_models == ["Distill-NVFP4"]
    log = Path(result.log_path)
    assert log == tmp_path / "out" / "serve" / "vllm.log"
    text = log.read_text()
    assert text.startswith("$ vllm serve ") and "--quantization modelopt_fp4" in text.splitlines()[0]
    assert '"GET /health HTTP/1.1" 200' in text and '"GET /v1/models HTTP/1.1" 200' in text
    pid = int(re.search(r"stub-vllm pid (\d+)", text)[1])
    argv = json.loads(re.search(r"argv (\[.*\])", text)[1])
    assert ["vllm", *argv] == result.command  # what ran is exactly the command the stage built
    assert gone(pid) and port_is_free(port)
    runs = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["serve.backend"] == "vllm"
    assert runs[0].data.tags["serve.served_models"] == "Distill-NVFP4"
    assert runs[0].data.tags["serve.command"] == shlex.join(result.command)
    art = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="serve/vllm.log",
                                              dst_path=str(tmp_path / "dl"))
    assert Path(art).read_text() == text


def test_stage_serves_the_distilled_model_never_the_base(stub_vllm, tmp_path, mlflow_uri, mlflow_experiment):
    # nothing distilled here: with the engine installed the stage refuses instead of serving model.path
    cfg = stage_cfg(tmp_path, mlflow_experiment, "experiment=qwen36_27b_card", "serve.port=0")
    with pytest.raises(UserError, match="no distilled model to serve.*never served by default"):
        run(cfg)
    # the merge output exists: that is what runs (a free port is picked for serve.port=0)
    merged = tmp_path / "out" / "merge" / "model"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    result = run(cfg)
    assert result.ran and result.command[:3] == ["vllm", "serve", str(merged)]
    assert str(cfg.model.path) not in result.command and "--quantization" not in result.command
    port = int(result.command[result.command.index("--port") + 1])
    assert port > 0 and port_is_free(port)
    # the released main dir wins over the merge output once `make release` assembled it
    released = tmp_path / "out" / "release" / "main"
    released.mkdir(parents=True)
    (released / "config.json").write_text("{}")
    assert run(cfg).command[2] == str(released)
