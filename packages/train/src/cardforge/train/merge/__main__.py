"""Run as: python -m cardforge.train.merge [hydra overrides]   (make merge ARGS="...")"""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.train.merge.stage import run

    stage_main("merge", run)  # a missing input (MissingInputError) is a UserError: one line, exit 2


if __name__ == "__main__":
    main()
