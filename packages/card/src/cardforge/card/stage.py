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
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cardforge.card import audit, collect, plots, render
from cardforge.core import tracking
from cardforge.core.artifacts import CardOutputs, Outputs, QuantOutputs, QuantResults
from cardforge.core.errors import UserError
from cardforge.core.io import atomic_write_json, atomic_write_text


def _commands(cfg: DictConfig, c: collect.Collected) -> dict[str, str]:
    """The serve config's launch commands, the llama.cpp one pointing at the GGUF eval measured (the eval run's
    `eval.distill` tag); without an eval run, the quant stage's file at eval.quant_tier."""
    try:
        from cardforge.serve.commands import inference_commands
    except ImportError:  # cardforge-serve not installed: the card says so instead of guessing a command
        return {"note": "pip install -e packages/serve for the launch commands"}
    gguf = None
    q, ev = c.get("quant"), c.get("eval")
    served = ev.tags.get("eval.distill", "") if ev is not None else ""
    if served.endswith(".gguf"):
        gguf = Path(served).name
    elif q is not None:
        results = QuantResults.from_dict(render.artifact_json(q, QuantOutputs.RESULTS_ARTIFACT))
        hit = results.gguf(str(cfg.eval.quant_tier))  # the eval stage's choice: imatrix first
        gguf = hit[1].name if hit else None
    cmds = inference_commands(cfg, gguf)
    # a local release folder outside the checkout would print this machine's path into a hub card
    local, shown = _release_dir(cfg)
    return {k: v.replace(local, shown) for k, v in cmds.items()} if local else cmds


def _release_dir(cfg: DictConfig) -> tuple[str | None, str]:
    """(the release folder's absolute path, how the card shows it: relative to the checkout, else release/main)."""
    try:
        from cardforge.serve.commands import released_model_dir
    except ImportError:
        return None, ""
    path = released_model_dir(cfg).absolute()
    root = Path(str(cfg.paths.root)).absolute()
    return str(path), ("./" + path.relative_to(root).as_posix() if path.is_relative_to(root)
                       else (Path("release") / path.name).as_posix())


def _release_note(cfg: DictConfig, languages: list[str]) -> dict[str, str]:
    """Said under the vLLM / SGLang commands when they point at the local release folder (no published repo is
    configured): that folder is what `make release` assembles, so the reader knows to run it first."""
    try:
        from cardforge.serve.commands import published_repo
    except ImportError:
        return {}
    if published_repo(cfg) or cfg.serve.get("model_path"):
        return {}
    shown = _release_dir(cfg)[1]
    return {lang: render.TEXT[lang]["release_note"].format(path=shown, experiment=cfg.experiment)
            for lang in languages}


@dataclass
class CardResult:
    card: str  # the README written
    run_id: str  # the card's MLflow run
    parent: str  # the pipeline run it reports on
    card_run: str  # = run_id (card.json's name for it)
    stages: dict[str, dict]  # stage -> {run_id, reused}
    not_measured: list[str]
    audited_numbers: int  # numbers checked against MLflow


def render_card(cfg: DictConfig, c, card_run, card_dir: Path) -> tuple[str, list[dict], int, dict]:
    """(the card's text, its values, how many numbers were audited, its plots by name). The card checks itself
    against MLflow before anything is written: a number no run recorded fails it."""
    import mlflow

    figures = plots.make_plots(c, card_dir)
    ctx = render.Context(
        title=str(cfg.card.title), experiment=str(cfg.experiment), card_run=card_run,
        attribution=OmegaConf.to_container(cfg.card.attribution, resolve=True),
        languages=list(cfg.card.languages), commands=_commands(cfg, c), plots=figures,
        license=str(cfg.card.license))
    ctx.release_note = _release_note(cfg, ctx.languages)
    text, values = render.render_with_values(c, ctx)
    try:
        checked = audit.audit(text, values, mlflow.MlflowClient(tracking.tracking_uri(cfg)))
    except audit.AuditError as e:
        raise UserError(f"the card failed its audit against MLflow (a bug in the card compiler): {e}") from None
    return text, values, checked, figures


def write_card(card: CardOutputs, c, card_run, text: str, values: list[dict], checked: int,
               figures: dict) -> CardResult:
    """README.md and card.json written and logged to the card run."""
    import mlflow

    readme = atomic_write_text(card.readme, text)
    sources = {"parent": c.parent.run_id, "card_run": card_run.run_id,
               "stages": {s: {"run_id": r.run_id, "reused": r.reused} for s, r in c.stages.items()},
               "not_measured": [s for s in collect.STAGES if s not in c.stages],
               "audited_numbers": checked, "values": values}
    atomic_write_json(card.sources, sources)
    shutil.rmtree(card.dir / ".mlflow", ignore_errors=True)  # downloaded copies, not part of the card
    mlflow.log_artifact(str(readme), CardOutputs.ARTIFACT)
    mlflow.log_artifact(str(card.sources), CardOutputs.ARTIFACT)
    for fig in figures.values():
        mlflow.log_artifact(str(fig), CardOutputs.ARTIFACT)
    mlflow.set_tags({"card.parent_run_id": c.parent.run_id, "card.not_measured": ",".join(sources["not_measured"])})
    mlflow.log_metric("card.stages_measured", float(len(c.stages)))
    mlflow.log_metric("card.audited_numbers", float(checked))
    return CardResult(str(readme), card_run.run_id, **{k: v for k, v in sources.items() if k != "values"})


def run(cfg: DictConfig) -> CardResult:
    import mlflow

    card = Outputs(cfg).card
    c = collect.collect(cfg, card.dir / ".mlflow")
    # nested under the pipeline run: the active one inside the pipeline, else the one reported on
    with tracking.stage_run(cfg, "card", parent_run_id=c.parent.run_id) as active:
        card_run = collect.StageRun.from_run(mlflow.get_run(active.info.run_id))
        card.dir.mkdir(parents=True, exist_ok=True)
        text, values, checked, figures = render_card(cfg, c, card_run, card.dir)
        result = write_card(card, c, card_run, text, values, checked, figures)
    print(f"cardforge card: {result.card} (pipeline run {c.parent.run_id[:8]}, card run {card_run.run_id[:8]}; "
          f"not measured: {', '.join(result.not_measured) or 'none'})", file=sys.stderr)
    return result
