"""Run as: python -m cardforge.pipeline [experiment=tiny] [hydra overrides]   (make reproduce EXP=tiny)
       python -m cardforge.pipeline experiment=NAME plan=true   (make plan EXP=NAME): the plan, nothing run"""

import sys

from cardforge.core.cli import stage_main


def _run(cfg):
    from cardforge.pipeline.run import run

    result = run(cfg)
    if cfg.get("plan"):  # printed by run(); nothing was run
        return result
    done = ", ".join(result.done + [f"{s} (unchanged)" for s in result.skipped]) or "none"
    if result.stopped_at:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        print(
            f"[pipeline] stopped before '{result.stopped_at}': {result.reason}.\n"
            f"[pipeline] stages done: {done}. MLflow parent run: {result.run_id} (make mlflow-ui).",
            file=sys.stderr,
        )
        if not multirun:  # in a sweep the other jobs still run; each says where it stopped
            raise SystemExit(3)
        return result
    print(f"[pipeline] all stages done: {done}. MLflow parent run: {result.run_id}", file=sys.stderr)
    return result


def main() -> None:
    stage_main("pipeline", _run)


if __name__ == "__main__":
    main()
