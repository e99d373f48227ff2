"""Run as: python -m cardforge.data [hydra overrides]   (make data ARGS="...")
       or: python -m cardforge.data show-mask FILE [--index N] [--html OUT.html] [--model NAME]"""

import sys

from cardforge.core.cli import stage_main


def main() -> None:
    # tool subcommands come before Hydra, which would take "show-mask" for an override
    if sys.argv[1:2] == ["show-mask"]:
        from cardforge.data.show_mask import main as show_mask

        raise SystemExit(show_mask(sys.argv[2:]))
    from cardforge.data.stage import run

    stage_main("data", run)


if __name__ == "__main__":
    main()
