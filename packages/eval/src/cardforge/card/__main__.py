"""Run as: python -m cardforge.card [hydra overrides]   (make card ARGS="...")"""

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    stage_main("card", not_implemented("card", 9))


if __name__ == "__main__":
    main()
