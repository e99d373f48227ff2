"""Run as: python -m cardforge.core.mlflow_ui [--port 5000]   (make mlflow-ui)

Serves the MLflow UI for the project's store ($MLFLOW_TRACKING_URI, else <repo>/mlflow/mlflow.db) on
127.0.0.1 only, with the same artifact root the stages write to.
"""

from __future__ import annotations

import argparse
import os
import sys

from cardforge.core import paths, tracking


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    uri = paths.default_tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if root := tracking.artifact_root(uri):
        cmd += ["--default-artifact-root", root]
    return cmd


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cardforge.core.mlflow_ui", description=__doc__.splitlines()[2])
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--host", default="127.0.0.1", help="keep the default unless you know who can reach it")
    args = ap.parse_args(argv)
    cmd = command(args.port, args.host)
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {cmd[cmd.index('--backend-store-uri') + 1]})", file=sys.stderr)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
