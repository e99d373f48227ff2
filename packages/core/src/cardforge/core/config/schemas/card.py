"""card.* and release.*: the card and release schemas.

Values: conf/card/default.yaml, conf/defaults/release.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING


@dataclass
class CardReference:
    """One published technique the recipe combines (the card's attribution list, conf/card/*.yaml)."""

    name: str = MISSING
    authors: str = MISSING
    year: int = MISSING
    ref: str = MISSING
    used_for: str = MISSING
    used_for_zh: str = MISSING


@dataclass
class CardConfig:
    title: str = MISSING
    languages: list[str] = MISSING
    license: str = MISSING
    hf_repo: Optional[str] = MISSING
    modelscope_repo: Optional[str] = MISSING
    parent_run_id: Optional[str] = MISSING
    attribution: list[CardReference] = MISSING

    def __post_init__(self) -> None:
        unknown = [lang for lang in self.languages if lang not in ("en", "zh")]
        if unknown or not self.languages:
            raise ValueError(f"card.languages must be a non-empty subset of [en, zh], got {list(self.languages)}")


class LinkMode(str, Enum):
    hardlink = "hardlink"  # a file on another filesystem is copied instead (said in the output and manifest)
    copy = "copy"


@dataclass
class ReleaseRepoIds:
    """Where one repository goes: OWNER/NAME per hub; null: <hub>_namespace/<repo name>, else not uploaded."""

    hf: Optional[str] = MISSING
    modelscope: Optional[str] = MISSING


@dataclass
class ReleaseRepos:
    main: ReleaseRepoIds = MISSING
    fp8: ReleaseRepoIds = MISSING
    nvfp4: ReleaseRepoIds = MISSING


@dataclass
class ReleaseConfig:
    """The release bundle (python -m cardforge.card.release; conf/release.yaml)."""

    out_dir: Optional[str] = MISSING
    dry_run: bool = MISSING
    link: LinkMode = MISSING
    parent_run_id: Optional[str] = MISSING
    name: Optional[str] = MISSING
    gguf_name: Optional[str] = MISSING
    gguf_tiers: list[str] = MISSING
    hf_namespace: Optional[str] = MISSING
    modelscope_namespace: Optional[str] = MISSING
    repos: ReleaseRepos = MISSING
    hf_cli: str = MISSING
    license: Optional[str] = MISSING
    attribution: list[CardReference] = MISSING

    def __post_init__(self) -> None:
        if self.hf_cli not in ("hf", "huggingface-cli"):
            raise ValueError(f"release.hf_cli must be hf or huggingface-cli, got {self.hf_cli!r}")
        for key in ("hf_namespace", "modelscope_namespace"):
            if "/" in (getattr(self, key) or ""):
                raise ValueError(f"release.{key} is an owner (user or org), without '/': {getattr(self, key)!r}")
        for repo in ("main", "fp8", "nvfp4"):
            for hub in ("hf", "modelscope"):
                rid = getattr(getattr(self.repos, repo), hub)
                if rid and rid.count("/") != 1:
                    raise ValueError(f"release.repos.{repo}.{hub} must be OWNER/NAME, got {rid!r}")
