"""Run as: python -m cardforge.train.merge [hydra overrides]   (make merge ARGS="...")"""

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    stage_main("merge", not_implemented("merge", 4))


if __name__ == "__main__":
    main()
