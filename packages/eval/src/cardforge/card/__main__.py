"""Run as: python -m cardforge.card [hydra overrides] [card.parent_run_id=RUN]   (make card ARGS="...")"""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.card.stage import run

    stage_main("card", run)


if __name__ == "__main__":
    main()
