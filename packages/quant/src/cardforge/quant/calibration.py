"""Calibration and held-out text for imatrix, W4A4 scales and KLD, drawn from the distillation set by default.

The default pool is the data stage's accepted trajectories (trajectories.jsonl) plus its rejected ones
(rejections.jsonl), in that order: both are the teacher's output on the task distribution (the judge only
filtered correctness), and a small run may accept few. The held-out tail used for KLD therefore comes from the
rejected set when there is one. Each trajectory is rendered with the model's chat template, tools included,
exactly as training sees it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cardforge.core.errors import UserError


def _render(record: dict, tokenizer) -> str:
    from cardforge.core.chat.schema import Trajectory

    traj = Trajectory.from_dict(record)
    kwargs = {"tools": [t for t in traj.tools]} if traj.tools else {}
    return tokenizer.apply_chat_template(traj.openai_messages(), tokenize=False, **kwargs)


def require(paths: list[Path]) -> None:
    """The first file is mandatory (the accepted set, or quant.calibration); the others are used if present."""
    if not paths[0].is_file():
        raise UserError(f"calibration text not found: {paths[0]} (run the data stage or set quant.calibration=FILE)")


def load_texts(paths: list[Path], tokenizer) -> list[str]:
    """One string per trajectory (.jsonl, rendered with the model's chat template) or per paragraph (.txt)."""
    require(paths)
    texts: list[str] = []
    for path in (p for p in paths if p.is_file()):
        if path.suffix == ".jsonl":
            texts += [_render(json.loads(line), tokenizer) for line in path.read_text().splitlines() if line.strip()]
        else:
            texts += [p for p in path.read_text().split("\n\n") if p.strip()]
    if not texts:
        raise UserError(f"calibration file {paths[0]} holds no text")
    return texts


def split(texts: list[str], heldout_fraction: float, min_texts: int = 10) -> tuple[list[str], list[str], bool]:
    """(calibration, held-out, truly held out). Below `min_texts` texts a split would starve both sides,
    so both use everything and the KLD is labelled as measured on calibration text."""
    if len(texts) < min_texts:
        return texts, texts, False
    n_held = max(1, round(len(texts) * heldout_fraction))
    return texts[:-n_held], texts[-n_held:], True


def at_least(text: str, n_tokens: int, tokenizer) -> str:
    """llama-imatrix / llama-perplexity need 2 contexts of tokens: repeat a short text (logged) to get there."""
    have = len(tokenizer(text)["input_ids"])
    if have >= n_tokens:
        return text
    reps = -(-n_tokens // max(have, 1)) + 1
    print(f"[quant] calibration text is {have} tokens, {n_tokens} needed: repeating it {reps}x", file=sys.stderr)
    return "\n\n".join([text] * reps)
