"""Run as: python -m cardforge.data [hydra overrides]   (make data ARGS="...")"""

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    stage_main("data", not_implemented("data", 3))


if __name__ == "__main__":
    main()
