"""Run as: python -m cardforge.data [hydra overrides]   (make data ARGS="...")
       or: python -m cardforge.data show-mask FILE [--index N] [--html OUT.html] [--model NAME]"""

import sys

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    # tool subcommands come before Hydra, which would take "show-mask" for an override
    if sys.argv[1:2] == ["show-mask"]:
        from cardforge.data.show_mask import main as show_mask

        raise SystemExit(show_mask(sys.argv[2:]))
    stage_main("data", not_implemented("data", 3))


if __name__ == "__main__":
    main()
