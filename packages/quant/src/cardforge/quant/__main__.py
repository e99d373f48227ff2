"""Run as: python -m cardforge.quant [format=gguf|fp8|nvfp4] [hydra overrides]   (make quant ARGS="...")"""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.quant.stage import run

    stage_main("quant", run)


if __name__ == "__main__":
    main()
