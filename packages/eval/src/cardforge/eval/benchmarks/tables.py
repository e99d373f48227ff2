"""Read a local table (csv / jsonl / json / parquet) or an HF dataset id, as a list of dicts.

HF ids need network (and for GPQA, an accepted gated licence); here a local file of the same schema
stands in. A path that exists is always read locally.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def read_table(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if p.suffix == ".jsonl":
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix == ".json":
        return list(json.loads(p.read_text(encoding="utf-8")))
    if p.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(p).to_dict("records")
    raise ValueError(f"{p}: unsupported table format (use .csv, .jsonl, .json or .parquet)")


def is_local(source: str, root: str | Path | None = None) -> Path | None:
    for cand in (Path(source), Path(root or ".") / source):
        if cand.exists():
            return cand
    return None


def load_hf(dataset_id: str, split: str) -> list[dict]:
    """'owner/name' or 'owner/name:config' from the HF hub (needs network)."""
    from datasets import load_dataset

    name, _, config = dataset_id.partition(":")
    return [dict(r) for r in load_dataset(name, config or None, split=split)]
