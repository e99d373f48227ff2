"""Each package installs and imports on its own: a fresh venv per package holding only its wheel and the
wheels of the siblings it declares (transitively), where every module of it imports and no other cardforge
namespace exists. Built from a copy of packages/ (nothing is written into the checkout).

Third-party packages come from this test's own venv through a .pth line naming its site-packages: a path
added that way has its own .pth files ignored, so the cardforge editable installs there stay invisible. That
third-party dependencies are declared is pip's check at `make setup`; here it is the sibling graph.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())

IMPORT_ALL = """
import importlib, importlib.util, pkgutil, sys
name, absent = sys.argv[1], sys.argv[2].split(",") if sys.argv[2] else []
pkg = importlib.import_module(f"cardforge.{name}")
mods = [m.name for m in pkgutil.walk_packages(pkg.__path__, f"cardforge.{name}.")
        if not m.name.endswith("__main__")]  # a __main__ runs the stage
for m in mods:
    importlib.import_module(m)
present = [a for a in absent if importlib.util.find_spec(f"cardforge.{a}") is not None]
assert not present, f"cardforge.{present} importable without being declared"
print(len(mods) + 1, "modules")
"""


def _declared(package: str) -> set[str]:
    deps = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split("[")[0].split(">")[0].split("=")[0].strip().removeprefix("cardforge-") for d in deps
            if d.startswith("cardforge-")}


def _closure(package: str) -> set[str]:
    seen, todo = set(), [package]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += sorted(_declared(p))
    return seen


@pytest.fixture(scope="module")
def packages_copy(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("packages") / "packages"
    shutil.copytree(ROOT / "packages", dst, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    return dst


@pytest.mark.parametrize("package", PACKAGES)
def test_package_installs_and_imports_with_only_its_declared_siblings(package, packages_copy, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    Path(site, "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wanted = _closure(package)
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", *[str(packages_copy / p) for p in sorted(wanted)]],
                         capture_output=True, text=True, timeout=600, env=env)
    assert pip.returncode == 0, pip.stderr[-3000:]
    absent = ",".join(sorted(set(PACKAGES) - wanted))
    proc = subprocess.run([py, "-c", IMPORT_ALL, package, absent], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("modules")
