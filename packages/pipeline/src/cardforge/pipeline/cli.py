"""The `cardforge` console script: `cardforge STAGE [overrides]` runs STAGE's `python -m` module.

Here in cardforge-pipeline, the top of the package graph (it names every stage's module), not in core.
"""

from __future__ import annotations

import sys

# `cardforge STAGE [overrides]`: STAGE -> (module run as `python -m`, leading arguments it takes, what it does)
COMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "reproduce": ("cardforge.pipeline", (), "the whole chain under one MLflow run (= pipeline; make reproduce)"),
    "pipeline": ("cardforge.pipeline", (), "the whole chain; plan=true prints the plan, until=STAGE stops early"),
    "plan": ("cardforge.pipeline", ("plan=true",), "print the pipeline plan (stages, commands, GPU/disk needs)"),
    "models": ("cardforge.core.models", ("prepare",), "prepare the embedded models (NAMES, no network)"),
    "data": ("cardforge.data", (), "data stage: teacher ReAct trajectories -> JSONL"),
    "train": ("cardforge.train", (), "train stage: LoRA distillation (Lightning + PEFT)"),
    "merge": ("cardforge.train.merge", (), "merge stage: BF16 safetensors with the base MTP head"),
    "mtp": ("cardforge.train.mtp", (), "mtp stage: retrain the MTP draft head"),
    "quant": ("cardforge.quant", (), "quant stage: GGUF tiers + imatrix, FP8, NVFP4"),
    "serve": ("cardforge.serve", (), "serve stage: llama-server / vLLM / SGLang"),
    "eval": ("cardforge.eval", (), "eval stage: streaming harness, distill vs base, MTP speed"),
    "card": ("cardforge.card", (), "card stage: compile the model card from MLflow"),
    "release": ("cardforge.card.release", (), "release bundle: the card's repositories + manifest"),
    "show-mask": ("cardforge.data.show_mask", (), "which tokens of a trajectory the loss trains on (FILE --index N)"),
    "mlflow-ui": ("cardforge.core.mlflow_ui", (), "serve the MLflow UI on 127.0.0.1 (--port N)"),
}


def usage() -> str:
    lines = ["usage: cardforge STAGE [hydra overrides]     (= python -m <module> [overrides])", "", "stages:"]
    lines += [f"  {name:<10} {what}" for name, (_, _, what) in COMMANDS.items()]
    lines += ["", "e.g. cardforge reproduce experiment=tiny    cardforge train lora.r=8    cardforge train --help"]
    return "\n".join(lines)


def cardforge_main(argv: list[str] | None = None) -> None:
    """The `cardforge` console script: `cardforge STAGE [overrides]` runs STAGE's `python -m` module."""
    import runpy

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    stage, rest = argv[0], argv[1:]
    if stage not in COMMANDS:
        print(f"cardforge: unknown stage {stage!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    module, lead, _ = COMMANDS[stage]
    subcommand = [a for a in lead if "=" not in a]  # first (prepare); overrides last, after any flags
    sys.argv = [f"cardforge {stage}", *subcommand, *rest, *[a for a in lead if "=" in a]]
    # run as `python -m module` would (run_module sets argv[0] to the module's file)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
