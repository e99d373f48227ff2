"""Run as: python -m cardforge.train.merge [hydra overrides]   (make merge ARGS="...")"""

import sys

from cardforge.core.cli import stage_main


def _run(cfg):
    from cardforge.train.merge.stage import run
    from cardforge.train.stage import MissingInputError

    try:
        return run(cfg)
    except MissingInputError as e:  # a step the user skipped: one line, no traceback
        print(f"cardforge merge: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    stage_main("merge", _run)


if __name__ == "__main__":
    main()
