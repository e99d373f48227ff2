"""Run as: python -m cardforge.train [hydra overrides]   (make train ARGS="...")"""

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    stage_main("train", not_implemented("train", 4))


if __name__ == "__main__":
    main()
