"""`make mlflow-ui` serves the project's store on 127.0.0.1 and shows the runs the stages logged."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from cardforge.core import tracking
from cardforge.core.config.compose import compose


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_serves_logged_runs(mlflow_uri, mlflow_experiment):
    cfg = compose("train", [f"logger.experiment_name={mlflow_experiment}"])
    with tracking.stage_run(cfg, "train") as run:
        pass
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cardforge.core.mlflow_ui", "--port", str(port)],
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "mlflow ui did not answer within 90 s"
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/get?run_id={run.info.run_id}"
        with urllib.request.urlopen(url, timeout=10) as r:
            got = json.load(r)["run"]
        assert got["info"]["run_id"] == run.info.run_id
        tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
        assert tags["cardforge.stage"] == "train"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
