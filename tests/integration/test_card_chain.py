"""The real tiny chain's card, audited exactly (issue 22 items 3-5, issue 25 item 1), in the default tier.

One module-scoped run of `python -m cardforge.pipeline experiment=tiny` with the smallest settings that still run
every stage for real (data with the real teacher and sandbox, train, merge, mtp, quant with imatrix + a base tier,
eval distill vs base with the MTP bench, card) into temporary outputs and a temporary MLflow store. The tests
read that one chain: the card passes the exact audit against MLflow; changing any single number of it, each in
turn, fails the audit; a rerun skips every stage; an output rewritten behind the pipeline's back reruns that
stage (resuming the eval from its records), never silently reused.

Nothing here pins today's numbers or layout: the checks are over whatever the card prints (the tiny default model
and chat template may change).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from cardforge.card import audit

EXPERIMENT = "t-card-chain"
# the smallest real chain: every stage runs its real code on the tiny default model
SMALLEST = [
    "data.num_samples=4", "data.max_steps=3", "data.judge=false",  # judge off: a weak teacher may solve none
    "trainer.max_steps=2",
    "mtp.num_prompts=4", "mtp.steps=4", "mtp.bench=false", "mtp.max_new_tokens=16",
    "quant.gguf_tiers=[{tier: Q4_K_M, imatrix: true}]", "quant.compare_no_imatrix=false", "quant.fp8=false",
    "quant.nvfp4=[]", "quant.load_check=false", "quant.imatrix_chunks=2", "quant.kld_chunks=2",
    "eval.limit=2", "eval.max_tokens=16", "eval.mtp_n_max=[0,2]", "eval.bench_repeats=1", "eval.bench_max_tokens=16",
]


def _pipeline(tmp: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cardforge.pipeline", "experiment=tiny", f"logger.experiment_name={EXPERIMENT}",
           f"paths.outputs={tmp / 'out'}", f"hydra.run.dir={tmp / 'hydra'}", *SMALLEST, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-5000:]}"
    return proc


def _ran(stderr: str) -> list[str]:
    return re.findall(r"^\[pipeline\] (\w+) \.\.\.$", stderr, re.M)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    t0 = time.perf_counter()
    first = _pipeline(tmp, uri)
    seconds = time.perf_counter() - t0
    print(f"\nreal tiny chain, smallest settings: {seconds:.0f} s")
    card_dir = tmp / "out" / "card"
    return SimpleNamespace(tmp=tmp, uri=uri, first=first, seconds=seconds, client=MlflowClient(uri),
                           text=(card_dir / "README.md").read_text(),
                           sources=json.loads((card_dir / "card.json").read_text()))


def test_every_stage_ran_for_real_and_the_card_measured_each(chain):
    assert _ran(chain.first.stderr) == ["models", "data", "train", "merge", "mtp", "quant", "eval", "card"]
    assert chain.sources["not_measured"] == []
    assert "**Not measured in this run**" not in chain.text
    for stage, info in chain.sources["stages"].items():  # every stage's run is cited by the card
        assert f"`{info['run_id'][:8]}`" in chain.text, stage
        run = chain.client.get_run(info["run_id"])
        assert run.data.tags["cardforge.code_version"] in chain.text  # Sources show the code that ran it
        assert re.search(rf"`{info['run_id'][:8]}`.*dirty `(true|false|unknown)`", chain.text), stage
    assert "/tmp/" not in chain.text and str(Path.home()) not in chain.text  # no local path in a hub card


def test_the_real_card_passes_the_exact_audit(chain):
    checked = audit.audit(chain.text, chain.sources["values"], chain.client)
    assert checked == len(audit.numbers(chain.text)) >= 40
    assert checked == chain.sources["audited_numbers"]  # the card stage ran the same audit
    card_run = chain.client.get_run(chain.sources["card_run"])
    assert card_run.data.metrics["card.audited_numbers"] == checked


def _mutate(text: str, line: int, start: int, end: int) -> str:
    lines = text.split("\n")
    s = lines[line]
    i = max(j for j in range(start, end) if s[j].isdigit())
    lines[line] = s[:i] + str((int(s[i]) + 1) % 10) + s[i + 1:]
    return "\n".join(lines)


def test_changing_any_single_number_of_the_real_card_fails_the_audit(chain):
    nums = audit.numbers(chain.text)
    runs = {rid: chain.client.get_run(rid) for rid in {v["run_id"] for v in chain.sources["values"]}}
    store = SimpleNamespace(get_run=runs.__getitem__)  # the same MLflow records, read once for speed
    passed = []
    for line, start, end, tok in nums:
        try:
            audit.audit(_mutate(chain.text, line, start, end), chain.sources["values"], store)
        except audit.AuditError:
            continue
        passed.append((line + 1, tok))
    assert not passed, f"mutations the audit did not catch: {passed[:10]}"
    # a number added to fixed prose, and one added to a measured line, fail it too
    lines = chain.text.split("\n")
    i = next(n for n, ln in enumerate(lines) if ln.startswith("- ") and "[run " in ln)
    for forged in (lines[i].replace("[run ", "12 [run ", 1), lines[i] + " 7"):
        with pytest.raises(audit.AuditError):
            audit.audit("\n".join([*lines[:i], forged, *lines[i + 1:]]), chain.sources["values"], store)


def _code_changed(stderr: str) -> set[str]:
    """Stages rerun because their code (or, after such a rerun, an earlier stage's result) changed since the
    record: a shared checkout that others commit to while the test runs. Each says so in its line."""
    return set(re.findall(r"^\[pipeline\] (\w+): (?:code changed|an earlier stage's result changed) since run",
                          stderr, re.M))


def test_rerun_skips_and_an_output_rewritten_behind_the_pipeline_reruns_its_stage(chain):
    again = _pipeline(chain.tmp, chain.uri)
    # nothing reruns without a reason: only the card (always), or a stage whose code changed in between
    assert set(_ran(again.stderr)) - _code_changed(again.stderr) == {"card"}, again.stderr[-3000:]
    # a standalone eval (or anything else) rewrites the eval summary: the next chain reruns eval, says why in one
    # line, and the eval resumes from its per-question records (no question is asked again)
    summary = chain.tmp / "out" / "eval" / "summary.json"
    summary.write_text(summary.read_text().replace("{", "{\"edited\": true, ", 1))
    records = {p: p.read_bytes() for p in (chain.tmp / "out" / "eval").glob("*/*.jsonl")}
    assert records
    third = _pipeline(chain.tmp, chain.uri)
    assert "eval" in _ran(third.stderr), third.stderr[-3000:]
    assert set(_ran(third.stderr)) - _code_changed(third.stderr) <= {"eval", "card"}, third.stderr[-3000:]
    if "eval" not in _code_changed(third.stderr):
        (line,) = [ln for ln in third.stderr.splitlines() if "no longer what run" in ln]
        assert line.startswith("[pipeline] eval: outputs no longer") and "changed eval/summary.json" in line
    assert "edited" not in summary.read_text()
    if not _code_changed(third.stderr) & {"models", "data", "train", "merge", "mtp", "quant"}:
        # same models: the eval resumed from its records, not one question was asked again
        assert {p: p.read_bytes() for p in records} == records
    text = (chain.tmp / "out" / "card" / "README.md").read_text()
    sources = json.loads((chain.tmp / "out" / "card" / "card.json").read_text())
    assert audit.audit(text, sources["values"], chain.client) >= 40


def test_the_base_is_compared_at_the_distilled_files_format_built_when_missing(chain, tmp_path):
    """Item 2: the eval's base is the quant stage's base file at the distilled file's format, else built here with
    the quant stage's code and imatrix; where it cannot be built, one line naming the keys."""
    from cardforge.core.config.compose import compose
    from cardforge.core.errors import UserError
    from cardforge.eval import stage as ev

    eval_run = chain.client.get_run(chain.sources["stages"]["eval"]["run_id"])
    tags = eval_run.data.tags
    assert tags["eval.distill.format"] == tags["eval.base.format"] == "Q4_K_M-imatrix"  # read from the headers
    out = chain.tmp / "out"
    cfg = compose("eval", ["experiment=tiny", f"paths.outputs={out}", *[o for o in SMALLEST if o.startswith("eval.")]])
    distill, base = ev.targets(cfg)
    assert distill.format == base.format == "Q4_K_M-imatrix" and "base" in base.gguf.name

    built = ev._base_at(cfg, "Q5_K_M-imatrix", tmp_path)  # no such base file from the quant stage: built here
    assert ev.gguf_format(built) == "Q5_K_M-imatrix" and built.parent == tmp_path / "base-gguf"
    assert ev._base_at(cfg, "Q5_K_M-imatrix", tmp_path) == built  # built once

    bare = tmp_path / "bare"
    (bare / "quant").mkdir(parents=True)
    cfg2 = compose("eval", ["experiment=tiny", f"paths.outputs={bare}"])
    with pytest.raises(UserError, match=r"imatrix .* is missing.*quant.base_tiers=\[\{tier: Q6_K, imatrix: true\}\]"):
        ev._base_at(cfg2, "Q6_K-imatrix", tmp_path)
