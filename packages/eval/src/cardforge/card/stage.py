"""The card stage: compile `<paths.outputs>/card/README.md` from one pipeline invocation's MLflow runs.

Run as: python -m cardforge.card [hydra overrides] [card.parent_run_id=RUN]      (make card EXP=tiny)

1. collect.py finds the pipeline parent run (card.parent_run_id, the pipeline this process runs in, or the
   latest FINISHED one of `experiment`) and its stage runs (skipped stages: from .pipeline records).
2. plots.py copies the loss curve and the MTP bench plot from their runs and draws the accuracy deltas.
3. render.py writes the Markdown, English then Chinese, every number tagged with its run id.
The card, its plots and card.json (which run each stage came from) go to a `card` run nested under the
same parent.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cardforge.card import collect, plots, render
from cardforge.core import tracking
from cardforge.core.io import atomic_write_json, atomic_write_text


def _commands(cfg: DictConfig, c: collect.Collected) -> dict[str, str]:
    """The serve config's launch commands, the llama.cpp one pointing at the GGUF eval measured."""
    try:
        from cardforge.serve.commands import inference_commands
    except ImportError:  # cardforge-serve not installed: the card says so instead of guessing a command
        return {"note": "pip install -e packages/serve for the launch commands"}
    gguf = None
    q = c.get("quant")
    if q is not None:
        files = render.artifact_json(q, "quant/quant_results.json").get("files", {})
        tier = str(cfg.eval.quant_tier)
        keys = sorted((k for k in files if k.startswith(tier) and str(files[k].get("path", "")).endswith(".gguf")),
                      key=lambda k: ("imatrix" not in k, k))  # the eval stage's choice: imatrix first
        gguf = Path(files[keys[0]]["path"]).name if keys else None
    return inference_commands(cfg, gguf)


def run(cfg: DictConfig) -> dict:
    import mlflow

    card_dir = Path(cfg.paths.outputs) / "card"
    c = collect.collect(cfg, card_dir / ".mlflow")
    # nested under the pipeline run: the active one inside the pipeline, else the one reported on
    with tracking.stage_run(cfg, "card", parent_run_id=c.parent.run_id) as active:
        card_run = collect.StageRun.from_run(mlflow.get_run(active.info.run_id))
        card_dir.mkdir(parents=True, exist_ok=True)
        figures = plots.make_plots(c, card_dir)
        ctx = render.Context(
            title=str(cfg.card.title), experiment=str(cfg.experiment), card_run=card_run,
            attribution=OmegaConf.to_container(cfg.card.attribution, resolve=True),
            languages=list(cfg.card.languages), commands=_commands(cfg, c), plots=figures,
            license=str(cfg.card.license))
        text = render.render(c, ctx)
        readme = atomic_write_text(card_dir / "README.md", text)
        sources = {"parent": c.parent.run_id, "card_run": card_run.run_id,
                   "stages": {s: {"run_id": r.run_id, "reused": r.reused} for s, r in c.stages.items()},
                   "not_measured": [s for s in collect.STAGES if s not in c.stages]}
        atomic_write_json(card_dir / "card.json", sources)
        shutil.rmtree(card_dir / ".mlflow", ignore_errors=True)  # downloaded copies, not part of the card
        mlflow.log_artifact(str(readme), "card")
        mlflow.log_artifact(str(card_dir / "card.json"), "card")
        for fig in figures.values():
            mlflow.log_artifact(str(fig), "card")
        mlflow.set_tags({"card.parent_run_id": c.parent.run_id,
                         "card.not_measured": ",".join(sources["not_measured"])})
        mlflow.log_metric("card.stages_measured", float(len(c.stages)))
    print(f"cardforge card: {readme} (pipeline run {c.parent.run_id[:8]}, card run {card_run.run_id[:8]}; "
          f"not measured: {', '.join(sources['not_measured']) or 'none'})", file=sys.stderr)
    return {"card": str(readme), "run_id": card_run.run_id, **sources}
