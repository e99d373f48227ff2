"""eval.compare_base builds the base model's GGUF at the distilled file's format when the quant stage has none
(eval/stage.py `_base_at`) and keeps it under <outputs>/eval/base-gguf/. The kept file must be the one built from
TODAY's inputs: before, it was named `<model>-base-<fmt>.gguf` only, so after the quant stage re-made its imatrix
(new calibration data) or model.path pointed at another base, the eval reused the old file and compared the new
distilled model against a base quantized with another imatrix / another checkpoint. llama.cpp is faked here."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from cardforge.eval import stage as ev


def _fake_llama(monkeypatch, calls: list[str]):
    from cardforge.quant import gguf as qgguf
    from cardforge.quant import stage as qstage

    def convert(src, out):
        calls.append("convert")
        Path(out).write_bytes(b"bf16 of " + str(src).encode())
        return Path(out)

    def quantize(bf16, out, tier, imatrix, threads, log):
        calls.append(f"quantize {tier.key} {Path(imatrix).read_text() if imatrix else '-'}")
        Path(out).write_bytes(b"q")
        return Path(out)

    monkeypatch.setattr(qgguf, "convert", convert)
    monkeypatch.setattr(qgguf, "quantize", quantize)
    monkeypatch.setattr(qstage, "base_gguf_cache", lambda cfg, src: None)


def test_the_base_is_rebuilt_when_the_imatrix_or_the_checkpoint_changes(monkeypatch, tmp_path):
    calls: list[str] = []
    _fake_llama(monkeypatch, calls)
    from cardforge.quant import stage as qstage

    outputs = tmp_path / "out"
    base_a, base_b = tmp_path / "base-a", tmp_path / "base-b"
    for d, w in ((base_a, b"a"), (base_b, b"bb")):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(w)
    current = {"dir": base_a}
    monkeypatch.setattr(qstage, "base_model_dir", lambda cfg: current["dir"])
    imatrix = outputs / "quant" / "imatrix.gguf"
    imatrix.parent.mkdir(parents=True)
    imatrix.write_text("imatrix 1")
    cfg = OmegaConf.create({"paths": {"outputs": str(outputs)}, "model": {"name": "tiny", "embedded": False}})
    eval_dir = outputs / "eval"

    first = ev._base_at(cfg, "Q4_K_M-imatrix", eval_dir)
    assert ev._base_at(cfg, "Q4_K_M-imatrix", eval_dir) == first  # built once, reused while nothing changed
    assert calls == ["convert", "quantize Q4_K_M-imatrix imatrix 1"]

    imatrix.write_text("imatrix 2")  # the quant stage re-made its imatrix
    second = ev._base_at(cfg, "Q4_K_M-imatrix", eval_dir)
    assert second != first and calls[-1] == "quantize Q4_K_M-imatrix imatrix 2"

    current["dir"] = base_b  # another base checkpoint
    third = ev._base_at(cfg, "Q4_K_M-imatrix", eval_dir)
    assert third not in (first, second) and calls.count("convert") == 2 and len(calls) == 5
    assert all(p.parent == eval_dir / "base-gguf" and "tiny-base" in p.name for p in (first, second, third))
