"""Calibration and held-out text for imatrix and KLD, drawn from the distillation set by default."""

from __future__ import annotations

import json
from pathlib import Path

from cardforge.core.errors import UserError


def _render(record: dict, tokenizer) -> str:
    messages = record.get("messages") or []
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a record the template cannot render still has useful text
        return "\n".join(str(m.get("reasoning_content") or "") + str(m.get("content") or "") for m in messages)


def load_texts(path: Path, model_dir: Path) -> list[str]:
    """One string per trajectory (rendered with the model's chat template) or per paragraph of a .txt."""
    if not path.is_file():
        raise UserError(f"calibration text not found: {path} (run the data stage or set quant.calibration=FILE)")
    if path.suffix == ".jsonl":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        texts = [_render(json.loads(line), tok) for line in path.read_text().splitlines() if line.strip()]
    else:
        texts = [p for p in path.read_text().split("\n\n") if p.strip()]
    if not texts:
        raise UserError(f"calibration file {path} holds no text")
    return texts


def split(texts: list[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """Calibration head / held-out tail; at least one text on each side when there are two or more."""
    n_held = max(1, round(len(texts) * heldout_fraction)) if len(texts) > 1 else 0
    if n_held == 0:
        return texts, texts
    return texts[:-n_held], texts[-n_held:]
