"""Run as: python -m cardforge.card [hydra overrides] [card.parent_run_id=RUN]   (make card ARGS="...")
The release bundle is its own entry point: python -m cardforge.card.release [overrides] (make release)."""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.card.stage import run

    stage_main("card", run)


if __name__ == "__main__":
    main()
