"""The llama.cpp launcher and the serve stage against real llama-server processes on 127.0.0.1: health,
MTP probe, clean stops (exit, Ctrl-C, SIGKILL of the owning Python process), startup errors, the stage's
MLflow record, and the vLLM command printed where vLLM is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from cardforge.core.models.smollm2 import gguf_path
from cardforge.serve.launchers.llama_cpp import llama_server
from cardforge.serve.process import ServerStartError
from cardforge.serve.speculation import probe

SERVE = {"host": "127.0.0.1", "port": 0, "ctx_size": 2048, "threads": 2, "startup_timeout_s": 90,
         "mtp": {"enabled": False}}


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once pid no longer runs (a zombie waiting for a reaper counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_tiny_model_drafts_with_mtp_and_stops_clean(tiny_gguf, tmp_path):
    serve = {**SERVE, "mtp": {"enabled": True, "n_max": 3, "p_min": 0.0}}
    with llama_server(tiny_gguf, serve, log_path=tmp_path / "server.log") as srv:
        assert srv.base_url.startswith("http://127.0.0.1:") and srv.startup_s < 90
        assert "--jinja" in srv.command and srv.command[srv.command.index("--spec-type") + 1] == "draft-mtp"
        with urllib.request.urlopen(srv.base_url + "/health", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"
        result = probe(srv.base_url, max_tokens=8)
        pid, watchdog = srv.pid, srv.watchdog.pid
    assert result.draft_n > 0 and 0 <= result.draft_n_accepted <= result.draft_n, result
    assert gone(pid) and gone(watchdog)
    assert "draft-mtp" in (tmp_path / "server.log").read_text()


def test_smollm2_answers_sensibly(tmp_path):
    with llama_server(gguf_path(), SERVE, log_path=tmp_path / "server.log") as srv:
        resp = post(srv.base_url + "/v1/chat/completions", {
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16, "temperature": 0})
        pid = srv.pid
    assert "Paris" in resp["choices"][0]["message"]["content"]
    assert gone(pid)


def test_a_server_that_dies_reports_its_log_tail(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match=r"exited with status \d+ during startup") as err:
        with llama_server(gguf_path(), SERVE, log_path=tmp_path / "server.log", extra_args=["--no-such-flag"]):
            pass
    assert time.monotonic() - t0 < 30
    assert "no-such-flag" in str(err.value) and "server.log" in str(err.value)


def test_a_corrupt_gguf_is_one_line_before_the_server_starts(tmp_path):
    from cardforge.core.errors import UserError

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(UserError, match=r"broken.gguf is not a GGUF file .*make quant") as err:
        with llama_server(bad, SERVE, log_path=tmp_path / "server.log"):
            pass
    assert "\n" not in str(err.value) and not (tmp_path / "server.log").exists()


def test_a_server_that_is_too_slow_times_out_and_is_stopped(tmp_path):
    with pytest.raises(ServerStartError, match="not healthy .* after 0 s .*serve.startup_timeout_s"):
        with llama_server(gguf_path(), {**SERVE, "startup_timeout_s": 0.05}, log_path=tmp_path / "server.log"):
            pass
    line = (tmp_path / "server.log").read_text().splitlines()[0]
    assert line.startswith("$ ") and "llama-server" in line
    out = subprocess.run(["pgrep", "-f", str(tmp_path / "server.log")], capture_output=True)
    assert out.returncode == 1  # nothing left running


OWNER = textwrap.dedent("""
    import sys, threading, time
    from cardforge.serve.launchers.llama_cpp import llama_server
    serve = {"host": "127.0.0.1", "port": 0, "ctx_size": 1024, "threads": 1, "mtp": {"enabled": False}}
    def start():
        with llama_server(sys.argv[1], serve) as srv:
            print(srv.pid, srv.watchdog.pid, flush=True)
            time.sleep(600)
    if sys.argv[2] == "thread":  # no PDEATHSIG from a worker thread: the watchdog alone must do it
        threading.Thread(target=start, daemon=True).start()
        time.sleep(600)
    else:
        start()
""")


@pytest.mark.parametrize("where", ["main", "thread"])
def test_sigkill_of_the_owner_leaves_no_server(where, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen([sys.executable, str(script), str(gguf_path()), where], stdout=subprocess.PIPE, text=True)
    try:
        server_pid, watchdog_pid = map(int, owner.stdout.readline().split())
        assert not gone(server_pid, timeout=0.5)
        os.kill(owner.pid, signal.SIGKILL)  # no finally, no atexit: only the kernel and the watchdog act
        owner.wait(timeout=10)
        assert gone(server_pid, timeout=10), f"llama-server {server_pid} outlived its killed owner"
        assert gone(watchdog_pid, timeout=10)
    finally:
        owner.kill()


def _stage_env(tmp_path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def test_ctrl_c_stops_the_serve_stage_cleanly(tmp_path):
    cmd = [sys.executable, "-m", "cardforge.serve", "experiment=smollm2_demo", f"model={gguf_path()}",
           f"paths.outputs={tmp_path}", "serve.threads=2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_stage_env(tmp_path))
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "Ctrl-C stops it" in line:
                break
        # keep draining stderr: a stage blocked on a full pipe while stopping would look like a hang
        drain = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)
        drain.start()
        record = json.loads((tmp_path / "serve" / "serve.json").read_text())
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the serve stage did not stop within 60 s of Ctrl-C; its stderr:\n" + "".join(seen)[-4000:])
        assert code == 0, "".join(seen)[-4000:]
    finally:
        proc.kill()
    assert record["backend"] == "llama_cpp" and record["mtp_check"]["status"] == "not_expected"
    assert gone(record["pid"])


def test_stage_run_logs_the_mtp_check_to_mlflow(tiny_gguf, tmp_path, mlflow_uri, mlflow_experiment):
    import mlflow

    from cardforge.core.config.compose import compose
    from cardforge.serve.stage import run

    cfg = compose("serve", [f"serve.model_path={tiny_gguf}", "serve.keep_running=false", "serve.threads=2",
                            "serve.mtp.probe_tokens=8", f"paths.outputs={tmp_path}",
                            f"logger.experiment_name={mlflow_experiment}"])
    result = run(cfg)
    assert result.ran and result.probe.draft_n > 0
    assert result.verdict.status in {"ok", "low_acceptance"}  # random-init head: acceptance ~0 is expected
    runs = mlflow.search_runs(experiment_names=[mlflow_experiment], output_format="list")
    assert len(runs) == 1
    data = runs[0].data
    assert data.metrics["spec.draft_n"] == result.probe.draft_n
    assert data.metrics["spec.accept_rate"] == pytest.approx(result.probe.accept_rate)
    assert data.tags["serve.mtp_check"] == result.verdict.status
    assert ("serve.mtp_warning" in data.tags) == result.verdict.warn
    assert json.loads((tmp_path / "serve" / "serve.json").read_text())["probe"]["draft_n"] == result.probe.draft_n


def test_cli_prints_the_vllm_command_when_vllm_is_missing(tmp_path):
    pytest.importorskip("hydra")
    if shutil.which("vllm"):
        pytest.skip("a vllm executable is on PATH here: the CLI would start it")
    out = subprocess.run([sys.executable, "-m", "cardforge.serve", "backend=vllm", "model=Qwen/Qwen3.6-27B"],
                         capture_output=True, text=True, timeout=60, env=_stage_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "vllm serve Qwen/Qwen3.6-27B --served-model-name Qwen3.6-27B --host 127.0.0.1 --port 8000 "
        "--tensor-parallel-size 1 --max-model-len 32768 --reasoning-parser qwen3 --enable-auto-tool-choice "
        "--tool-call-parser qwen3_xml --speculative-config '{\"method\":\"mtp\",\"num_speculative_tokens\":3}'")
    assert "vllm is not installed here" in out.stderr


def test_stage_serves_images_for_a_vision_language_model(tmp_path, mlflow_uri, mlflow_experiment):
    # the default tiny model has Qwen3.6's vision tower: the stage converts its projector and passes --mmproj, so an
    # image request reaches the model (its image tokens show in the prompt count)
    from cardforge.core.config.compose import compose
    from cardforge.quant.load_check import ask_image, tiny_png
    from cardforge.serve.stage import run

    cfg = compose("serve", ["serve.keep_running=false", "serve.threads=2", "serve.mtp.enabled=false",
                            f"paths.outputs={tmp_path}", f"logger.experiment_name={mlflow_experiment}"])
    assert cfg.model.name == "tiny-qwen36-vl-mtp"
    result = run(cfg)
    i = result.command.index("--mmproj")
    mmproj = Path(result.command[i + 1])
    assert mmproj.is_file() and mmproj.name.startswith("mmproj-") and mmproj.parent == tmp_path / "serve"
    with llama_server(result.command[result.command.index("-m") + 1], {**SERVE, "mmproj": str(mmproj)}) as srv:
        with_image, text_only = ask_image(srv.base_url, tiny_png()), ask_image(srv.base_url, None)
    assert with_image["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"]


def test_a_gguf_is_served_with_the_projector_beside_it(tmp_path):
    from cardforge.core.config.compose import compose
    from cardforge.serve.stage import resolve_mmproj

    text = tmp_path / "model-Q4_K_M.gguf"
    text.write_bytes(b"GGUF")
    cfg = compose("serve", [f"serve.model_path={text}"])
    assert resolve_mmproj(cfg, text) is None  # a text-only release: no --mmproj
    (tmp_path / "mmproj-model-BF16.gguf").write_bytes(b"GGUF")
    assert resolve_mmproj(cfg, text) == tmp_path / "mmproj-model-BF16.gguf"
    assert resolve_mmproj(compose("serve", [f"serve.model_path={text}", "serve.mmproj=null"]), text) is None
