"""Dump the resolved config of every experiment preset under every primary config, one YAML file each.

    .venv/bin/python scripts/dump_configs.py OUT_DIR

Used to check that a config refactor changes nothing: dump before, dump after, `diff -r`. The checkout whose
conf/ and code are read is the one `cardforge.core` imports from; another checkout T (e.g. a clone at the commit
before the change), with this venv:

    cd T && CARDFORGE_HOME=$PWD PYTHONPATH=$(ls -d $PWD/packages/*/src | paste -sd:) \
        /path/to/.venv/bin/python /path/to/scripts/dump_configs.py OUT_DIR

The checkout's absolute path is written as <ROOT> so two checkouts compare equal. The hydra node is left out
(as `--cfg job` does).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from cardforge.core import paths
from cardforge.core.config.compose import compose


def main(out: Path) -> None:
    root = str(paths.repo_root())
    conf = paths.conf_dir()
    primaries = sorted(p.stem for p in conf.glob("*.yaml") if p.stem != "base")
    presets = sorted(p.stem for p in (conf / "experiment").glob("*.yaml"))
    out.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        for primary in primaries:
            cfg = compose(primary, [f"experiment={preset}"])
            text = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True).replace(root, "<ROOT>")
            (out / f"{preset}.{primary}.yaml").write_text(text)
    print(f"{len(presets)} presets x {len(primaries)} primaries from {root} -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
