"""Run as: python -m cardforge.pipeline [experiment=tiny] [hydra overrides]   (make reproduce EXP=tiny)"""

import sys

from cardforge.core.cli import stage_main


def _run(cfg):
    from cardforge.pipeline.run import run

    result = run(cfg)
    done = ", ".join(result.done) or "none"
    if result.stopped_at:
        print(
            f"[pipeline] stopped before '{result.stopped_at}': {result.reason}.\n"
            f"[pipeline] stages done: {done}. MLflow parent run: {result.run_id} (make mlflow-ui).",
            file=sys.stderr,
        )
        raise SystemExit(3)
    print(f"[pipeline] all stages done: {done}. MLflow parent run: {result.run_id}", file=sys.stderr)
    return result


def main() -> None:
    stage_main("pipeline", _run)


if __name__ == "__main__":
    main()
