"""Run as: python -m cardforge.train [hydra overrides]   (make train ARGS="...")"""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.train.stage import run

    stage_main("train", run)  # a missing input (MissingInputError) is a UserError: one line, exit 2


if __name__ == "__main__":
    main()
