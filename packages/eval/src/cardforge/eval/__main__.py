"""Run as: python -m cardforge.eval [hydra overrides]   (make eval ARGS="...")"""

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    stage_main("eval", not_implemented("eval", 7))


if __name__ == "__main__":
    main()
