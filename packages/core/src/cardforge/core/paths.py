"""Where things live: the repo (for conf/ and the default MLflow store) and the cache outside it."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The cardforge checkout: $CARDFORGE_HOME, else the tree this (editable) package lives in, else cwd."""
    if env := os.environ.get("CARDFORGE_HOME"):
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "conf" / "pipeline.yaml").is_file() and (parent / "packages").is_dir():
            return parent
    return Path.cwd().resolve()


def conf_dir() -> Path:
    return repo_root() / "conf"


def cache_dir() -> Path:
    """Shared cache outside the repo: the llama.cpp build and the embedded models."""
    env = os.environ.get("CARDFORGE_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cardforge"
    base.mkdir(parents=True, exist_ok=True)
    return base


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite store on disk inside the repo."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    store = repo_root() / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"
