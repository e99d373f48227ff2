"""Run as: python -m cardforge.serve [hydra overrides]   (make serve ARGS="...")"""

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    stage_main("serve", not_implemented("serve", 6))


if __name__ == "__main__":
    main()
