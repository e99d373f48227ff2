"""Run as: python -m cardforge.core.mlflow_ui [--port 5000] [--experiment cardforge]   (make mlflow-ui)

Serves the MLflow UI for the project's store ($MLFLOW_TRACKING_URI, else <repo>/mlflow/mlflow.db) on
127.0.0.1 only, with the same artifact root the stages write to, and prints the URL that opens on the
experiment's runs table (MLflow 3 would open an experiment on its GenAI traces page). --port 0 picks a free port;
a port in use is one line naming the fix.
"""

from __future__ import annotations

import argparse
import os
import sys

from cardforge.core import paths, tracking

DEFAULT_EXPERIMENT = "cardforge"  # logger.experiment_name's default


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    uri = paths.default_tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if root := tracking.artifact_root(uri):
        cmd += ["--default-artifact-root", root]
    return cmd


def runs_url(base: str, uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """`base/#/experiments/<id>/runs?workflowType=machine_learning` for the experiment (every experiment of the store is marked as holding runs,
    so the UI opens them on the runs table too); the experiment list when it does not exist yet."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    try:
        exps = client.search_experiments()
    except Exception:  # noqa: BLE001 - an empty or new store: the list page
        return f"{base}/#/experiments"
    for exp in exps:
        tracking.mark_runs_experiment(client, exp)
    found = next((e for e in exps if e.name == experiment), None)
    # workflowType: the UI's "Model training" side (its GenAI side lists training runs as "Evaluation runs")
    return (f"{base}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning" if found
            else f"{base}/#/experiments?workflowType=machine_learning")


def main(argv: list[str] | None = None) -> None:
    from cardforge.core.errors import UserError
    from cardforge.core.io import check_port_free

    ap = argparse.ArgumentParser(prog="python -m cardforge.core.mlflow_ui", description=__doc__.splitlines()[2])
    ap.add_argument("--port", type=int, default=5000, help="0: any free port")
    ap.add_argument("--host", default="127.0.0.1", help="keep the default unless you know who can reach it")
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="the experiment whose runs the URL opens")
    args = ap.parse_args(argv)
    port = args.port
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind((args.host, 0))
            port = s.getsockname()[1]
    try:
        check_port_free(args.host, port, key="MLFLOW_PORT")
    except UserError as e:
        print(f"cardforge mlflow-ui: {e} (make mlflow-ui MLFLOW_PORT=0)", file=sys.stderr)
        raise SystemExit(2) from None
    cmd = command(port, args.host)
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    url = runs_url(f"http://{args.host}:{port}", uri, args.experiment)
    print(f"MLflow UI: {url}   (store: {uri})", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
