"""Run as: python -m cardforge.train [hydra overrides]   (make train ARGS="...")"""

import sys

from cardforge.core.cli import stage_main


def _run(cfg):
    from cardforge.train.stage import MissingInputError, run

    try:
        return run(cfg)
    except MissingInputError as e:  # a step the user skipped: one line, no traceback
        print(f"cardforge train: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    stage_main("train", _run)


if __name__ == "__main__":
    main()
