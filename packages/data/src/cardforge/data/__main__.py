"""Run as: python -m cardforge.data [hydra overrides]   (make data ARGS="...")
The loss-mask viewer is its own entry point: python -m cardforge.data.show_mask FILE (cardforge show-mask FILE)."""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.data.stage import run

    stage_main("data", run)


if __name__ == "__main__":
    main()
