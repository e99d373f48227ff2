"""OmegaConf resolvers used by conf/: cheap by design (validation resolves every interpolation)."""

from __future__ import annotations

from omegaconf import OmegaConf

from cardforge.core import paths


def _embedded(name: str) -> str:
    # The cache path is a function of the model's content hash; building happens when a stage loads it.
    from cardforge.core.models import embedded_path

    return str(embedded_path(name))


def register_resolvers() -> None:
    for name, fn in {
        "cf.repo_root": lambda: str(paths.repo_root()),
        "cf.cache_dir": lambda: str(paths.cache_dir()),
        "cf.embedded": _embedded,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
