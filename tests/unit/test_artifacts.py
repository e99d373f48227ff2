"""cardforge.core.artifacts: the stage-output handles, the one tier type and its key spelling, and
QuantResults.gguf (the eval stage's, the card's and the MTP bench's choice of file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cardforge.core.artifacts import (MERGED_MANIFEST, RETRAINED_MANIFEST, Outputs, QuantOutputs, QuantResults, Tier,
                                      flat_tier_keys, is_base, tier_keys)
from cardforge.core.config.compose import compose


def test_tier_key_round_trip_and_config_entries():
    assert Tier("Q4_K_M", True).key == "Q4_K_M-imatrix" and Tier("Q8_0").key == "Q8_0"
    assert Tier("Q4_K_M", True).result_key(base=True) == "base:Q4_K_M-imatrix"
    for key in ("Q4_K_M-imatrix", "Q8_0", "BF16"):
        assert Tier.parse(key).key == key
    assert Tier.parse("base:Q6_K-imatrix") == Tier("Q6_K", True) and is_base("base:Q6_K") and not is_base("Q6_K")
    # the config's GgufTierConfig (enum + bool), its dict form and a key all give the same Tier
    cfg = compose("quant", ["experiment=tiny"])
    entries = list(cfg.quant.gguf_tiers)
    assert [Tier.of(e) for e in entries] == [Tier.parse(k) for k in tier_keys(entries)]
    assert Tier.of({"tier": "Q5_K_M", "imatrix": False}) == Tier("Q5_K_M", False) == Tier.of("Q5_K_M")
    assert Tier.of(OmegaConf.create({"tier": "Q5_K_M", "imatrix": True})).key == "Q5_K_M-imatrix"


def test_quant_gguf_tier_is_the_one_type():
    from cardforge.quant import gguf

    assert gguf.Tier is Tier
    assert gguf.file_name("m", Tier("Q4_K_M", True), True) == "m-MTP-Q4_K_M-imatrix.gguf"
    assert gguf.file_name("m", Tier("Q8_0", False), False) == "m-Q8_0.gguf"


def test_flat_tier_keys_from_mlflow_params():
    params = {"quant.gguf_tiers.0.tier": "Q4_K_M", "quant.gguf_tiers.0.imatrix": "True",
              "quant.gguf_tiers.1.tier": "Q8_0", "quant.gguf_tiers.1.imatrix": "False"}
    assert flat_tier_keys(params) == ["Q4_K_M-imatrix", "Q8_0"]
    assert flat_tier_keys({}) == []


def _results(tmp_path: Path) -> QuantResults:
    files = {k: {"path": str(tmp_path / f"m-{k.replace(':', '_')}.gguf")}
             for k in ("BF16", "Q4_K_M-imatrix", "Q4_K_M", "Q8_0", "base:Q4_K_M-imatrix")}
    files["FP8-block128"] = {"path": str(tmp_path / "fp8")}
    out = QuantOutputs(tmp_path)
    out.results_file.write_text(json.dumps({"source": "x", "files": files}))
    return out.results()


def test_quant_results_gguf_prefers_imatrix_and_takes_keys(tmp_path):
    r = _results(tmp_path)
    assert r.raw["source"] == "x" and "FP8-block128" not in r.ggufs()
    assert r.gguf("Q4_K_M") == ("Q4_K_M-imatrix", tmp_path / "m-Q4_K_M-imatrix.gguf")
    assert r.gguf("Q4_K_M", imatrix=False)[0] == "Q4_K_M"
    assert r.gguf(Tier("Q4_K_M", False))[0] == "Q4_K_M"
    assert r.gguf("Q8_0")[0] == "Q8_0" and r.gguf("Q8_0", imatrix=True) is None
    assert r.gguf("Q4_K_M", base=True)[0] == "base:Q4_K_M-imatrix" == r.gguf("base:Q4_K_M")[0]
    assert r.gguf("Q6_K") is None and r.gguf("FP8-block128") is None


def test_quant_results_missing_file_is_empty(tmp_path):
    r = QuantOutputs(tmp_path / "nope").results()
    assert r.files == {} and r.gguf("Q4_K_M") is None


def test_outputs_layout_is_the_one_the_stages_wrote_before(tmp_path):
    cfg = OmegaConf.create({"paths": {"outputs": str(tmp_path)}, "release": {"out_dir": None}})
    out = Outputs(cfg)
    assert out.data.trajectories == tmp_path / "data" / "trajectories.jsonl"
    assert out.train.adapter == tmp_path / "train" / "adapter"
    assert out.train.run_dir("abc") == tmp_path / "train" / "runs" / "abc" and out.train.run_dir() == out.train.dir
    assert out.merge.model == tmp_path / "merge" / "model"
    assert out.merge.base_manifest == tmp_path / "merge" / "mtp_manifest.base.json"
    assert out.merge.merged_manifest.name == MERGED_MANIFEST
    assert out.mtp.retrained_manifest == tmp_path / "mtp" / "model" / RETRAINED_MANIFEST
    assert out.quant.results_file == tmp_path / "quant" / "quant_results.json"
    assert out.quant.imatrix == tmp_path / "quant" / "imatrix.gguf"
    assert out.eval.summary == tmp_path / "eval" / "summary.json"
    assert out.card.readme == tmp_path / "card" / "README.md"
    assert out.release == tmp_path / "release"
    assert out.pipeline_record("quant") == tmp_path / ".pipeline" / "quant.json"
    assert Outputs(OmegaConf.create({"paths": {"outputs": "o"}, "release": {"out_dir": "/r"}})).release == Path("/r")
    assert Outputs(tmp_path).quant.dir == tmp_path / "quant"


@pytest.mark.parametrize("stage", ["quant", "eval", "card", "release", "pipeline"])
def test_outputs_from_every_primary_config(stage):
    cfg = compose(stage, ["experiment=tiny"])
    assert Outputs(cfg).root == Path(str(cfg.paths.outputs))
