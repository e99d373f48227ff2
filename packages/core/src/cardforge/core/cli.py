"""Stage entry points: `python -m cardforge.<stage> [hydra overrides]` (or `cardforge <stage> [overrides]`,
the console script of cardforge.pipeline.cli, which sits above every stage).

`stage_main` checks the overrides first (each job of a multirun too) so a bad one fails with one line
naming the key and the allowed values, then hands over to `@hydra.main` (multirun, --cfg, --help ...).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from omegaconf import DictConfig

from cardforge.core import paths
from cardforge.core.errors import UserError
from cardforge.core.config.compose import ConfigError, compose, expand_sweeps, setup, validate_config

NO_PREFLIGHT = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc"}


def _overrides(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                 "--config-dir", "-cd", "--experimental-rerun"):
            skip = True
            continue
        if not a.startswith("-") and ("=" in a or a.startswith("~")):
            out.append(a)
    return out


def preflight(config_name: str, argv: list[str]) -> None:
    if NO_PREFLIGHT & set(argv):
        return
    overrides = _overrides(argv)
    jobs = expand_sweeps(overrides) if ("-m" in argv or "--multirun" in argv) else [overrides]
    for job in jobs:
        compose(config_name, job)


def stage_main(config_name: str, run: Callable[[DictConfig], Any]) -> None:
    """Run `run(cfg)` as a Hydra app on conf/<config_name>.yaml; config errors exit 2 with one line."""
    import hydra

    setup()
    try:
        preflight(config_name, sys.argv[1:])
    except ConfigError as e:
        print(f"cardforge {config_name}: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

    @hydra.main(version_base="1.3", config_path=str(paths.conf_dir()), config_name=config_name)
    def _main(cfg: DictConfig) -> Any:
        validate_config(cfg)
        from cardforge.core.tracking import Killed

        try:
            return run(cfg)
        except UserError as e:
            print(f"cardforge {config_name}: error: {e}", file=sys.stderr)
            if _multirun():  # the launcher records this job FAILED and the sweep's other jobs go on
                raise
            raise SystemExit(2) from None
        except Killed as e:  # SIGTERM: the open MLflow runs were ended KILLED on the way out
            print(f"cardforge {config_name}: {e}; its MLflow runs are marked KILLED", file=sys.stderr)
            raise SystemExit(128 + e.signum) from None

    try:
        _main()
    finally:  # a multirun this process launched: one line per job, its MLflow parent ended (cardforge.core.sweep)
        from cardforge.core import sweep

        sweep.finish()


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class StageNotImplemented(SystemExit):
    """Exit status 3 with a message: the stage is planned but not built yet."""

    def __init__(self, stage: str, issue: int):
        super().__init__(3)
        self.message = (
            f"cardforge {stage}: this stage is not implemented yet (tracked as issue #{issue}); "
            "nothing was run and nothing was changed."
        )


def not_implemented(stage: str, issue: int) -> Callable[[DictConfig], Any]:
    def run(cfg: DictConfig) -> Any:
        err = StageNotImplemented(stage, issue)
        print(err.message, file=sys.stderr)
        raise err

    return run
