"""Run as: python -m cardforge.quant [hydra overrides]   (make quant ARGS="...")"""

from cardforge.core.cli import not_implemented, stage_main


def main() -> None:
    stage_main("quant", not_implemented("quant", 5))


if __name__ == "__main__":
    main()
