"""`release` and `show-mask` are entry points of their own: `python -m MODULE --help`, `cardforge NAME`, and the
Makefile target run the module, and no `__main__` dispatches on argv before Hydra sees it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cardforge.pipeline.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_release_module_help_is_hydras_on_the_release_config():
    r = _run("-m", "cardforge.card.release", "--help")
    assert r.returncode == 0, r.stderr
    assert "cardforge release:" in r.stdout and "== Configuration groups ==" in r.stdout
    assert "release.dry_run" in r.stdout or "dry_run" in r.stdout


def test_release_module_refuses_a_bad_override_in_one_line():
    r = _run("-m", "cardforge.card.release", "release.link=teleport")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("cardforge release: config error: release.link"), r.stderr


def test_show_mask_module_help_and_missing_file():
    r = _run("-m", "cardforge.data.show_mask", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m cardforge.data.show_mask"), r.stderr
    assert "--index" in r.stdout and "--html" in r.stdout
    r = _run("-m", "cardforge.data.show_mask")  # FILE is required: argparse's usage error, exit 2
    assert r.returncode == 2 and "the following arguments are required: file" in r.stderr


@pytest.mark.parametrize("name, module", [("release", "cardforge.card.release"),
                                          ("show-mask", "cardforge.data.show_mask")])
def test_cardforge_command_runs_the_module(name, module):
    assert COMMANDS[name][:2] == (module, ())
    r = _run("-c", "from cardforge.pipeline.cli import cardforge_main; cardforge_main()", name, "--help")
    assert r.returncode == 0, r.stderr
    assert ("cardforge release:" in r.stdout) if name == "release" else ("--index" in r.stdout)


def test_makefile_targets_run_the_modules():
    text = (ROOT / "Makefile").read_text()
    assert "-m cardforge.card.release experiment=$(EXP)" in text
    assert "-m cardforge.data.show_mask $(" in text


@pytest.mark.parametrize("main", ["packages/card/src/cardforge/card/__main__.py",
                                  "packages/data/src/cardforge/data/__main__.py"])
def test_stage_mains_do_not_sniff_argv(main):
    tree = ast.parse((ROOT / main).read_text())
    sniffed = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "argv"]
    assert not sniffed, f"{main} reads sys.argv itself (line {sniffed[0].lineno}): give the tool its own module"
