"""Run as: python -m cardforge.train.mtp [hydra overrides]   (make mtp ARGS="...")"""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.train.mtp.stage import run

    stage_main("mtp", run)


if __name__ == "__main__":
    main()
