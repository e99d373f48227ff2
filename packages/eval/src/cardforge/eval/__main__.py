"""Run as: python -m cardforge.eval [hydra overrides]   (make eval ARGS="...")

e.g. python -m cardforge.eval eval.distill_model=a.gguf eval.base_model=b.gguf   (see docs/evaluation.md)
"""

from cardforge.core.cli import stage_main


def main() -> None:
    from cardforge.eval.stage import run

    stage_main("eval", run)


if __name__ == "__main__":
    main()
