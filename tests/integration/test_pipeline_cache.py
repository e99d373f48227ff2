"""The pipeline's stage cache knows the code and the outputs (issue 22 item 5, issue 25 item 1), against a real
MLflow store: a stand-in stage whose code lives in a real package on sys.path (edited between invocations),
writing real files under paths.outputs that a "standalone run" then rewrites or deletes."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cardforge.core.config.compose import compose
from cardforge.pipeline import fingerprints
from cardforge.pipeline import run as pipeline_run
from cardforge.pipeline.run import StageSpec


@pytest.fixture()
def standin_pkg(tmp_path, monkeypatch):
    """A package `cf_standin_stage` on sys.path: its `run` writes outputs/made/{a.txt, sub/b.bin}."""
    root = tmp_path / "src"
    pkg = root / "cf_standin_stage"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from pathlib import Path
        from cardforge.core import tracking

        VERSION = 1

        def run(cfg):
            with tracking.stage_run(cfg, "made") as r:
                out = Path(cfg.paths.outputs) / "made"
                (out / "sub").mkdir(parents=True, exist_ok=True)
                (out / "a.txt").write_text(f"v{VERSION}")
                (out / "sub" / "b.bin").write_bytes(bytes(range(256)))
                return {"dir": str(out), "run_id": r.info.run_id}
    '''))
    monkeypatch.syspath_prepend(str(root))
    fingerprints.clear_cache()
    yield pkg
    fingerprints.clear_cache()
    sys.modules.pop("cf_standin_stage", None)


def _chain(experiment: str, out: Path, *overrides: str):
    spec = StageSpec("made", "cf_standin_stage:run", 0, ("data",), packages=("cardforge.core", "cf_standin_stage"))
    cfg = compose("pipeline", [f"logger.experiment_name={experiment}", f"paths.outputs={out}", *overrides])
    return pipeline_run.run(cfg, stages=[spec])


def test_outputs_and_code_are_part_of_the_skip_check(standin_pkg, mlflow_uri, mlflow_experiment, tmp_path, capfd):
    out = tmp_path / "out"
    first = _chain(mlflow_experiment, out)
    assert first.done == ["made"]
    rec = json.loads((out / ".pipeline" / "made.json").read_text())
    assert set(rec["outputs"]) == {"made/a.txt", "made/sub/b.bin"}  # the result named the folder: its files
    assert len(rec["code"]) == 16
    run = MlflowClient(mlflow_uri).get_run(first.results["made"]["run_id"])
    assert run.data.tags["cardforge.code_version"] == rec["code"]  # tagged when the run opened
    assert run.data.tags["cardforge.outputs_sha256"] == fingerprints.outputs_digest(rec["outputs"])
    capfd.readouterr()

    assert _chain(mlflow_experiment, out).skipped == ["made"]  # nothing changed
    assert "made: unchanged" in capfd.readouterr().err

    # a standalone run rewrites an output (same size, new content): rerun, one line naming the file
    (out / "made" / "a.txt").write_text("v9")
    again = _chain(mlflow_experiment, out)
    err = capfd.readouterr().err
    assert again.done == ["made"], err
    (line,) = [ln for ln in err.splitlines() if "no longer what run" in ln]
    assert "changed made/a.txt" in line and "rerunning" in line
    assert (out / "made" / "a.txt").read_text() == "v1"  # the stage's own output again

    # touched but identical (mtime moved, content equal): still skipped
    p = out / "made" / "sub" / "b.bin"
    p.write_bytes(p.read_bytes())
    assert _chain(mlflow_experiment, out).skipped == ["made"]
    capfd.readouterr()

    # an output deleted: rerun
    p.unlink()
    assert _chain(mlflow_experiment, out).done == ["made"]
    assert "missing made/sub/b.bin" in capfd.readouterr().err

    # the stage's code changes (a fixed bug): rerun without force, and the record carries the new version
    old = json.loads((out / ".pipeline" / "made.json").read_text())["code"]
    (standin_pkg / "__init__.py").write_text((standin_pkg / "__init__.py").read_text().replace("VERSION = 1",
                                                                                             "VERSION = 2"))
    fingerprints.clear_cache()
    sys.modules.pop("cf_standin_stage", None)
    fixed = _chain(mlflow_experiment, out)
    err = capfd.readouterr().err
    assert fixed.done == ["made"] and "code changed since run" in err and old in err
    new = json.loads((out / ".pipeline" / "made.json").read_text())["code"]
    assert new != old and (out / "made" / "a.txt").read_text() == "v2"


def test_code_version_follows_the_files_not_git(tmp_path, monkeypatch):
    """Same files, same version wherever they are imported from (a clone, an install); an edit changes it;
    bytecode caches do not."""
    for where in ("a", "b"):
        pkg = tmp_path / where / "cf_same_code"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("X = 1\n")
        (pkg / "data.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    fingerprints.clear_cache()
    va = fingerprints.code_version(("cf_same_code",))
    (tmp_path / "a" / "cf_same_code" / "__pycache__").mkdir()
    (tmp_path / "a" / "cf_same_code" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    fingerprints.clear_cache()
    assert fingerprints.code_version(("cf_same_code",)) == va
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    sys.modules.pop("cf_same_code", None)
    fingerprints.clear_cache()
    assert fingerprints.package_dir("cf_same_code") == tmp_path / "b" / "cf_same_code"
    assert fingerprints.code_version(("cf_same_code",)) == va
    (tmp_path / "b" / "cf_same_code" / "data.json").write_text('{"k": 1}')
    fingerprints.clear_cache()
    assert fingerprints.code_version(("cf_same_code",)) != va
    fingerprints.clear_cache()


def test_every_real_stage_names_its_code():
    for spec in pipeline_run.STAGES:
        assert "cardforge.core" in spec.packages, spec.name
        for pkg in spec.packages:
            assert fingerprints.package_dir(pkg) is not None, (spec.name, pkg)


def test_an_override_the_preset_ignores_is_refused_at_composition(tmp_path):
    """model.path on an embedded model would be silently ignored (training ran on the embedded model, rc 0)."""
    import subprocess

    from cardforge.core.config.compose import ConfigError

    with pytest.raises(ConfigError, match=r"model.path=/no/such/dir: ignored for the embedded model"):
        compose("train", ["model.path=/no/such/dir"])
    assert compose("train", ["model.embedded=false", "model.path=/some/dir"]).model.path == "/some/dir"
    for preset in ("tiny", "smollm2_demo", "qwen36_27b_card"):
        compose("pipeline", [f"experiment={preset}"])  # every preset's own model.path passes
    proc = subprocess.run([sys.executable, "-m", "cardforge.train", "model.path=/no/such/dir",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.path=/no/such/dir: ignored" in lines[0], proc.stderr[-2000:]


def test_a_rerun_caused_by_an_earlier_stage_says_so(standin_pkg, mlflow_uri, mlflow_experiment, tmp_path, capfd):
    """A stage whose own code and config are unchanged but whose upstream result changed reruns with a line."""
    out = tmp_path / "out"
    first_spec = StageSpec("made", "cf_standin_stage:run", 0, ("data",), packages=("cardforge.core", "cf_standin_stage"))
    second_spec = StageSpec("after", "cf_standin_stage:run", 0, ("lora",), packages=("cardforge.core",))
    cfg = compose("pipeline", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={out}"])
    assert pipeline_run.run(cfg, stages=[first_spec, second_spec]).done == ["made", "after"]
    capfd.readouterr()
    changed = compose("pipeline", [f"logger.experiment_name={mlflow_experiment}", f"paths.outputs={out}",
                                   "data.num_samples=5"])  # a section only `made` reads
    res = pipeline_run.run(changed, stages=[first_spec, second_spec])  # made's new run id: a new fingerprint
    err = capfd.readouterr().err
    assert res.done == ["made", "after"]
    assert "[pipeline] after: an earlier stage's result changed since run" in err
