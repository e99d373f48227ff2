"""card.* and release.*: the card and release schemas (values: conf/card/default.yaml, conf/defaults/release.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from omegaconf import MISSING


@dataclass
class CardReference:
    """One published technique the recipe combines (the card's attribution list, conf/card/*.yaml)."""

    name: str = MISSING
    authors: str = MISSING
    year: int = MISSING
    ref: str = ""  # arXiv id or venue
    used_for: str = ""  # what the recipe takes from it, English
    used_for_zh: str = ""  # the same, Chinese


@dataclass
class CardConfig:
    title: str = MISSING
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    license: str = "apache-2.0"
    hf_repo: Optional[str] = None
    modelscope_repo: Optional[str] = None
    # the pipeline run to compile; null: the pipeline run this process is part of, else the latest
    # FINISHED pipeline run of `experiment` (a killed or failed one is never picked by default)
    parent_run_id: Optional[str] = None
    attribution: list[CardReference] = field(default_factory=list)

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

    hf: Optional[str] = None
    modelscope: Optional[str] = None


@dataclass
class ReleaseRepos:
    main: ReleaseRepoIds = field(default_factory=ReleaseRepoIds)  # card + BF16 safetensors + gguf/
    fp8: ReleaseRepoIds = field(default_factory=ReleaseRepoIds)  # FP8 block-128
    nvfp4: ReleaseRepoIds = field(default_factory=ReleaseRepoIds)  # NVFP4 W4A16 at the root + w4a4/


@dataclass
class ReleaseConfig:
    """The release bundle (python -m cardforge.card.release; conf/release.yaml)."""

    out_dir: Optional[str] = None  # null: <paths.outputs>/release (not interpolated: the config hash ignores paths)
    dry_run: bool = False  # list what would be uploaded, write nothing
    link: LinkMode = LinkMode.hardlink
    parent_run_id: Optional[str] = None  # the pipeline run to release; null: as the card stage picks it
    name: Optional[str] = None  # main repo name (FP8/NVFP4 add -FP8/-NVFP4); null: card.title
    gguf_name: Optional[str] = None  # GGUF file prefix (<gguf_name>-MTP-<TIER>.gguf); null: the quant stage's names
    gguf_tiers: list[str] = field(default_factory=list)  # quant_results keys to ship; empty: the quant run's tiers
    hf_namespace: Optional[str] = None
    modelscope_namespace: Optional[str] = None
    repos: ReleaseRepos = field(default_factory=ReleaseRepos)
    hf_cli: str = "hf"  # hf | huggingface-cli (same arguments)
    license: Optional[str] = None  # null: card.license
    attribution: list[CardReference] = field(default_factory=list)  # empty: card.attribution

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
