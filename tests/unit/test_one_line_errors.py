"""Issue 25 item 3: the commonest failures end in ONE line that names the fix, never a traceback.

Each case runs the real code path: the stage CLI in a subprocess where the failure is met at the command line
(exit 2, one stderr line), the helper itself where a case needs a rigged disk or a listening socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cardforge.core import io
from cardforge.core.config.compose import ConfigError, compose
from cardforge.core.errors import UserError


def _cli(module: str, *overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-m", module, *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    # MLflow's own INFO lines when it creates a fresh store's tables are not ours
    lines = [ln for ln in proc.stderr.strip().splitlines() if "Warning" not in ln and not ln.startswith(" ")
             and " INFO mlflow." not in ln]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# --- composition: additions and values checked against the schema ---


@pytest.mark.parametrize("override, line", [
    ("+lora.rr=16", "lora.rr: no such key; keys in 'lora': _target_, bias, lora_alpha, lora_dropout, r, "
                    "target_modules, task_type"),
    ("data.max_seq_len=-5", "data.max_seq_len must be >= 1 (tokens per training sample), got -5"),
    ("+trainer.max_step=5", "trainer.max_step: no such key; keys in 'trainer': "),
])
def test_schema_checks_at_composition(override, line):
    with pytest.raises(ConfigError) as err:
        compose("train", [override])
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_free_form_extra_still_takes_additions():
    assert compose("train", ["+extra.note=x"]).extra.note == "x"


def test_cli_addition_unknown_to_the_schema_exits_2_with_one_line(tmp_path):
    line = _one_line(_cli("cardforge.train", "+lora.rr=16", tmp_path=tmp_path))
    assert line.startswith("cardforge train: config error: lora.rr: no such key; keys in 'lora': ")


def test_a_torch_knob_missing_from_the_installed_torch_is_one_line_naming_its_version(monkeypatch):
    import torch

    from cardforge.core.config import compose as compose_mod

    on = ["trainer.compile_layers=true", "trainer.activation_memory_budget=0.1"]
    compose("train", on)  # the pinned torch has every knob we set
    monkeypatch.setattr(compose_mod, "TORCH_KNOBS", [
        ("trainer.activation_memory_budget", lambda c: c.trainer.activation_memory_budget is not None,
         "torch._functorch.config", ("activation_memory_budget_renamed",))])
    with pytest.raises(ConfigError) as err:
        compose("train", on)
    assert str(err.value) == (
        f"trainer.activation_memory_budget=0.1: the installed torch {torch.__version__} has no "
        "torch._functorch.config.activation_memory_budget_renamed; set trainer.activation_memory_budget=null or "
        "install a torch that has it")
    compose("train")  # knobs that are off are not looked up


class _ConfigWithout:
    """A torch config module (torch.utils._config_module.ConfigModule) of a torch that lacks some knobs: reading or
    setting a name it does not have raises AttributeError, as the real one does."""

    def __init__(self, **knobs):
        object.__setattr__(self, "_config", dict(knobs))

    def __getattr__(self, name):
        try:
            return self._config[name]
        except KeyError:
            raise AttributeError(f"{name} does not exist") from None

    def __setattr__(self, name, value):
        if name not in self._config:
            raise AttributeError(f"{name} does not exist")
        self._config[name] = value


def test_a_torch_without_the_memory_budget_knob_compiles_layers_when_no_budget_is_set(monkeypatch):
    """compile_layers=true with activation_memory_budget=null passes composition on such a torch, so the stage
    must not set the knob then (it reset it to 1.0 and crashed mid-run); the bench refuses @B in one line."""
    import torch
    import torch._dynamo
    import torch._functorch

    from cardforge.train import bench
    from cardforge.train.stage import configure_compile

    dynamo = _ConfigWithout(recompile_limit=8, accumulated_recompile_limit=256)
    monkeypatch.setattr(torch._dynamo, "config", dynamo)
    monkeypatch.setattr(torch._functorch, "config", _ConfigWithout())
    tc = compose("train", ["trainer.compile_layers=true"]).trainer
    assert tc.activation_memory_budget is None
    configure_compile(tc, max_seq_len=64, pad_multiple=16)
    assert dynamo.recompile_limit > 8 and dynamo.accumulated_recompile_limit == 256
    assert bench.parse_variant("cardforge+layers").memory_budget is None
    with pytest.raises(ValueError) as err:
        bench.parse_variant("cardforge+layers@0.1")
    assert str(err.value) == (
        f"'cardforge+layers@0.1': @B needs torch._functorch.config.activation_memory_budget, which the installed "
        f"torch {torch.__version__} lacks; drop @B or install a torch that has it")


# --- the train stage: data file key, the tolerant reader, a missing model path, the output disk ---


def _rows(path: Path, n: int = 4) -> list[str]:
    return [json.dumps({"input_ids": [1, 2, 3, 4 + i], "loss_mask": [0, 0, 1, 1]}) for i in range(n)]


def test_bad_lines_are_skipped_and_counted_with_file_and_line(tmp_path, caplog):
    from cardforge.train.data import load_samples

    f = tmp_path / "train.jsonl"
    rows = _rows(f)
    f.write_text("\n".join([rows[0], "garbage {", rows[1], "[1, 2]", rows[2]]) + "\n" + rows[3][:10])  # + torn
    with caplog.at_level("WARNING", "cardforge.train"):
        samples = load_samples(f, tokenizer=None)
    assert len(samples) == 3
    msg = caplog.records[-1].getMessage()
    assert f"skipped 3 bad line(s) of 6, e.g. {f}:2: not valid JSON" in msg
    read = io.read_jsonl_rows(f)
    assert [n for n, _ in read.rows] == [1, 3, 5]
    assert read.bad == [f"{f}:2: not valid JSON (Expecting value)", f"{f}:4: a JSON list, not an object",
                        f"{f}:6: torn last line (10 bytes, no newline: a writer was interrupted)"]


def test_bad_trajectory_line_is_named_and_refused_by_the_key(tmp_path):
    from cardforge.train.data import load_samples

    f = tmp_path / "t.jsonl"
    f.write_text('{"task_id": "a", "messages": "not a list"}\n')
    with pytest.raises(UserError) as err:
        load_samples(f, tokenizer=None, skip_bad_lines=False)
    assert str(err.value).startswith(f"{f}:1: schema_version: missing; ") and "skip_bad_lines=true" in str(err.value)
    with pytest.raises(UserError, match=r"t.jsonl: no sample has a trained token \(0 samples"):
        load_samples(f, tokenizer=None)


def test_cli_train_bad_line_refused_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    rows = _rows(f)
    f.write_text("\n".join([rows[0], rows[1], '{"input_ids": [1, 2', rows[2]]) + "\n")
    line = _one_line(_cli("cardforge.train", f"trainer.data_file={f}", "trainer.skip_bad_lines=false",
                          f"paths.outputs={tmp_path / 'out'}", tmp_path=tmp_path))
    assert line.startswith(f"cardforge train: error: {f}:3: not valid JSON")
    assert line.endswith("set trainer.skip_bad_lines=true to skip bad lines")


def test_cli_train_data_file_missing_is_one_line(tmp_path):
    line = _one_line(_cli("cardforge.train", f"trainer.data_file={tmp_path / 'nope.jsonl'}",
                          f"paths.outputs={tmp_path / 'out'}", tmp_path=tmp_path))
    assert line == (f"cardforge train: error: trainer.data_file={tmp_path / 'nope.jsonl'}: no such file; point it at "
                    "a JSONL of trajectories or pre-tokenized rows")
    # without the key the message names both ways to get a data file
    line = _one_line(_cli("cardforge.train", f"paths.outputs={tmp_path / 'out'}", tmp_path=tmp_path))
    assert "run the data stage first" in line and "trainer.data_file=FILE.jsonl" in line


def test_cli_train_missing_model_path_is_one_line_not_the_hub_error(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(_rows(f)) + "\n")
    line = _one_line(_cli("cardforge.train", "model.embedded=false", "model.path=/no/such/dir",
                          f"trainer.data_file={f}", f"paths.outputs={tmp_path / 'out'}", tmp_path=tmp_path))
    assert line == ("cardforge train: error: model.path=/no/such/dir: does not exist; set model.path to a local "
                    "checkpoint folder (config.json + *.safetensors) or use an embedded model (experiment=tiny)")
    assert "Repo id" not in line


def test_model_path_checks(tmp_path):
    assert io.check_model_path("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"  # a hub id goes to the loader
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        io.check_model_path(str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert io.check_model_path(str(tmp_path / "ckpt")) == tmp_path / "ckpt"
    for bad in ("./rel/dir", "~/no-such-cardforge-dir", "a/b/c"):
        with pytest.raises(UserError, match="does not exist"):
            io.check_model_path(bad)


def test_cli_train_unwritable_outputs_is_one_line_before_the_model_loads(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(_rows(f)) + "\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # outputs under a regular file: no user (root included) can create it
    line = _one_line(_cli("cardforge.train", f"trainer.data_file={f}", f"paths.outputs={blocker}/out",
                          tmp_path=tmp_path))
    assert line.startswith(f"cardforge train: error: cannot write to {blocker}/out/train (")
    assert line.endswith("make it writable or set paths.outputs=A_WRITABLE_DIR")


def test_preflight_free_space_against_the_stage_need(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    assert io.preflight_output(tmp_path / "ok", need_bytes=1 << 20, stage="train") == tmp_path / "ok"
    with pytest.raises(UserError) as err:
        io.preflight_output(tmp_path / "full", need_bytes=free * 2, stage="quant")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'full'} has ") and "the quant stage needs about" in msg
    assert msg.endswith("free some space or set paths.outputs=A_DIR_WITH_ROOM")
    assert not list((tmp_path / "ok").iterdir())  # the write probe leaves nothing behind


def test_train_stage_checks_the_disk_before_loading_the_model(tmp_path, monkeypatch, mlflow_uri):
    import shutil

    from cardforge.train import stage

    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(_rows(f)) + "\n")
    cfg = compose("train", [f"trainer.data_file={f}", f"paths.outputs={tmp_path / 'out'}"])
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    monkeypatch.setattr(stage, "train", lambda *a, **k: pytest.fail("trained on a full disk"))
    with pytest.raises(UserError, match=r"has 1 MiB free but the train stage needs about \d+ MiB"):
        stage.run(cfg)


# --- the mtp and eval stages: the output disk (both write model-sized GGUFs) ---


def _full_disk(monkeypatch, free: int = 1 << 20) -> None:
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, free))


@pytest.fixture()
def merged_tiny(tiny_vl_model_dir, tmp_path) -> Path:
    """<outputs> whose merge/model is the tiny VL+MTP checkpoint (experiment=tiny's model), its files symlinked."""
    out = tmp_path / "out"
    (out / "merge" / "model").mkdir(parents=True)
    for f in tiny_vl_model_dir.iterdir():
        (out / "merge" / "model" / f.name).symlink_to(f)
    return out


def test_mtp_disk_need_is_what_the_stage_writes(merged_tiny):
    from cardforge.quant import sizes
    from cardforge.train.mtp import stage

    src, out = merged_tiny / "merge" / "model", merged_tiny / "mtp"
    inv = sizes.checkpoint_inventory(src)
    assert len(inv) > 100 and all(dtype == "BF16" for _, dtype in inv.values())
    # the headers' shapes are the checkpoint: every tensor's bytes = the shards less their headers
    shards = sorted(src.glob("*.safetensors"))
    assert sizes.bf16_bytes(inv) == sum(f.stat().st_size - 8 - int.from_bytes(f.read_bytes()[:8], "little")
                                        for f in shards)
    vocab = sizes.tokenizer_bytes(src)
    bf16, q8, head = sizes.gguf_bytes(inv, "BF16", vocab), sizes.gguf_bytes(inv, "Q8_0", vocab), \
        sizes.part_bytes(inv, "mtp.")
    assert sizes.gguf_bytes(inv, "BF16") < sizes.bf16_bytes(inv) and head > 0  # the tower goes to the mmproj
    cfg = compose("mtp", ["experiment=tiny", f"paths.outputs={merged_tiny}"])
    need, what = stage.disk_need(cfg, src, out)
    assert need == bf16 + (bf16 + 2 * q8) + head + (64 << 20)
    assert what == ("the distilled model's BF16 GGUF for the continuations + 2 GGUF(s) at mtp.bench_tier=Q8_0 and "
                    "a BF16 one in passing (mtp.bench) + the head shard and records")
    assert stage.disk_need(compose("mtp", ["experiment=tiny", f"paths.outputs={merged_tiny}", "mtp.bench=false"]),
                           src, out)[0] == bf16 + head + (64 << 20)
    (out / "gguf").mkdir(parents=True)  # GGUFs left by an earlier run of ANOTHER checkpoint: all rebuilt
    for name in ("distilled-BF16.gguf", "grafted-Q8_0.gguf", "retrained-Q8_0.gguf"):
        (out / "gguf" / name).write_bytes(b"")
    assert stage.disk_need(cfg, src, out)[0] == need
    # a rerun over the same merged model: its BF16 and grafted GGUFs are reused, the retrained head (written anew
    # by every run) is converted again
    stage.mark_gguf(out / "gguf" / "distilled-BF16.gguf", stage.checkpoint_id(src, trunk_only=True))
    stage.mark_gguf(out / "gguf" / "grafted-Q8_0.gguf", stage.checkpoint_id(src))
    assert stage.disk_need(cfg, src, out) == (head + bf16 + q8 + (64 << 20), "1 GGUF(s) at mtp.bench_tier=Q8_0 "
                                              "and a BF16 one in passing (mtp.bench) + the head shard and records")


def test_mtp_gguf_of_another_checkpoint_is_never_reused(tmp_path):
    """The bench GGUFs and the continuations' BF16 are reused only when built from the same checkpoint: a merge
    rerun or a new head (files rewritten) makes them stale, hard links of unchanged files do not."""
    from cardforge.train.mtp import stage

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"trunk")
    (ckpt / "model-mtp.safetensors").write_bytes(b"head 1")
    gguf = tmp_path / "retrained-Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    ident, trunk = stage.checkpoint_id(ckpt), stage.checkpoint_id(ckpt, trunk_only=True)
    assert not stage.current_gguf(gguf, ident)  # no sidecar: an older stage's file, not trusted
    stage.mark_gguf(gguf, ident)
    assert stage.current_gguf(gguf, ident)
    linked = tmp_path / "linked"  # write_checkpoint hard-links the trunk: same identity
    linked.mkdir()
    for f in ckpt.iterdir():
        os.link(f, linked / f.name)
    assert stage.checkpoint_id(linked) == ident
    time.sleep(0.01)
    (ckpt / "model-mtp.safetensors").unlink()  # a retrained head, written anew (same size)
    (ckpt / "model-mtp.safetensors").write_bytes(b"head 2")
    assert stage.checkpoint_id(ckpt) != ident and not stage.current_gguf(gguf, stage.checkpoint_id(ckpt))
    assert stage.checkpoint_id(ckpt, trunk_only=True) == trunk  # the continuations depend on the trunk only


def test_mtp_stage_checks_the_disk_before_loading_the_trunk(merged_tiny, monkeypatch, mlflow_uri):
    from cardforge.train.mtp import stage

    cfg = compose("mtp", ["experiment=tiny", f"paths.outputs={merged_tiny}"])
    need, _ = stage.disk_need(cfg, merged_tiny / "merge" / "model", merged_tiny / "mtp")
    _full_disk(monkeypatch)
    monkeypatch.setattr(stage, "load_trunk", lambda *a, **k: pytest.fail("loaded the trunk on a full disk"))
    with pytest.raises(UserError) as err:
        stage.run(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{merged_tiny / 'mtp'} has 1 MiB free but the mtp stage needs about {io._gib(need)} "
                          "(the distilled model's BF16 GGUF for the continuations + 2 GGUF(s) at mtp.bench_tier=Q8_0")
    assert msg.endswith("): free some space or set paths.outputs=A_DIR_WITH_ROOM") and "\n" not in msg


def test_cli_mtp_unwritable_outputs_is_one_line(merged_tiny, tmp_path):
    (merged_tiny / "mtp").write_text("")  # a file where the stage's folder goes: no user (root included) can write
    line = _one_line(_cli("cardforge.train.mtp", "experiment=tiny", f"paths.outputs={merged_tiny}", tmp_path=tmp_path))
    assert line.startswith(f"cardforge mtp: error: cannot write to {merged_tiny / 'mtp'} (")
    assert line.endswith("the mtp stage writes its outputs there; make it writable or set paths.outputs=A_WRITABLE_DIR")


@pytest.mark.parametrize("base", ["none", "built under outputs", "BF16 in the cache"])
def test_eval_stage_checks_the_disk_for_the_base_gguf_it_builds(base, tmp_path, monkeypatch, mlflow_uri,
                                                                 tiny_vl_model_dir):
    from gguf import LlamaFileType

    from cardforge.eval import stage as ev
    from cardforge.quant import gguf as qgguf
    from cardforge.quant import sizes
    from cardforge.quant import stage as qstage

    distilled = _tiny_gguf(tmp_path / "distilled.gguf", file_type=LlamaFileType.MOSTLY_Q8_0)
    out, cache = tmp_path / "out", tmp_path / "cache" / "quant" / "base-gguf"
    cfg = compose("eval", ["experiment=tiny", f"paths.outputs={out}", f"eval.distill_model={distilled}",
                           f"eval.compare_base={str(base != 'none').lower()}"])
    # an embedded base keeps its BF16 GGUF in the cache; else it goes under <outputs>/eval/base-gguf
    kept = cache / "base-BF16.gguf" if base == "BF16 in the cache" else None
    monkeypatch.setattr(qstage, "base_gguf_cache", lambda cfg, src: kept)
    monkeypatch.setattr(qgguf, "convert", lambda *a, **k: pytest.fail("converted the base on a full disk"))
    monkeypatch.setattr(ev, "_run_suites", lambda *a, **k: pytest.fail("evaluated on a full disk"))
    inv, vocab = sizes.checkpoint_inventory(tiny_vl_model_dir), sizes.tokenizer_bytes(tiny_vl_model_dir)
    bf16, q8 = sizes.gguf_bytes(inv, "BF16", vocab), sizes.gguf_bytes(inv, "Q8_0", vocab)
    want = {"none": [(out / "eval", ev.RECORDS_BYTES, "the records", "paths.outputs")],
            "built under outputs": [(out / "eval", ev.RECORDS_BYTES + bf16 + q8, "the records + the base's BF16 GGUF "
                                     "(eval.compare_base) + the base as Q8_0 (eval.compare_base)", "paths.outputs")],
            "BF16 in the cache": [(out / "eval", ev.RECORDS_BYTES + q8, "the records + the base as Q8_0 "
                                   "(eval.compare_base)", "paths.outputs"),
                                  (cache, bf16, "the base's BF16 GGUF (eval.compare_base)", "CARDFORGE_CACHE")]}[base]
    assert ev.disk_need(cfg, out / "eval") == want
    _full_disk(monkeypatch)
    with pytest.raises(UserError) as err:
        ev.run(cfg)
    folder, need, what, _ = want[0]  # the outputs are checked first
    assert str(err.value) == (f"{folder} has 1 MiB free but the eval stage needs about {io._gib(need)} "
                              f"({what}): free some space or set paths.outputs=A_DIR_WITH_ROOM")
    if len(want) > 1:  # room in the outputs, none in the cache: that one line names the cache
        _full_disk(monkeypatch, free=want[0][1] + 1)
        with pytest.raises(UserError) as err:
            ev.run(cfg)
        assert str(err.value).startswith(f"{cache} has ") and str(err.value).endswith(
            "(the base's BF16 GGUF (eval.compare_base)): free some space or set CARDFORGE_CACHE=A_DIR_WITH_ROOM")


# --- serving: a busy port, a corrupt GGUF ---


def _tiny_gguf(path: Path, file_type: int | None = None) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    if file_type is not None:  # general.file_type: the format the eval stage serves the base at
        w.add_file_type(file_type)
    w.add_tensor("t.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_corrupt_gguf_cases_are_one_line_each(tmp_path):
    good = _tiny_gguf(tmp_path / "good.gguf")
    assert io.check_gguf(good) == good
    raw = good.read_bytes()
    cases = {"not GGUF": (b"PK\x03\x04" + raw[4:], "is not a GGUF file (starts with b'PK\\x03\\x04'"),
             "torn header": (raw[:40], ": corrupt GGUF header (error: "),
             "truncated data": (raw[:-100], "is truncated: ")}
    for name, (data, expect) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.gguf"
        bad.write_bytes(data)
        with pytest.raises(UserError) as err:
            io.check_gguf(bad, "eval.distill_model")
        msg = str(err.value)
        assert expect in msg and "\n" not in msg, (name, msg)
        assert msg.endswith('rebuild it (make quant ARGS="force=[quant]") or set eval.distill_model to another .gguf')


def test_busy_port_is_one_line_suggesting_port_0(tmp_path):
    from cardforge.serve.launchers.llama_cpp import llama_server

    gguf = _tiny_gguf(tmp_path / "m.gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError) as err:
            with llama_server(gguf, {"host": "127.0.0.1", "port": port}, log_path=tmp_path / "srv.log"):
                pass
    assert str(err.value) == (f"127.0.0.1:{port} is already in use (Address already in use); stop what listens "
                              "there or set serve.port=0 to pick a free port")
    assert not (tmp_path / "srv.log").exists()  # refused before anything started


# --- a missing model path in the other stages that read model.path (not only train) ---


def test_data_stage_missing_model_path_is_one_line_not_the_hub_error():
    from cardforge.data.stage import _student_tokenizer

    cfg = compose("data", ["model.embedded=false", "model.path=/no/such/dir"])
    with pytest.raises(UserError) as err:
        _student_tokenizer(cfg)
    assert str(err.value).startswith("model.path=/no/such/dir: does not exist; set model.path to a local checkpoint")
    assert "Repo id" not in str(err.value)


def test_serve_missing_model_folder_is_one_line_naming_the_key(tmp_path):
    from cardforge.serve.stage import resolve_gguf

    cfg = compose("serve", ["model.embedded=false", "model.path=/no/such/dir", f"paths.outputs={tmp_path}"])
    with pytest.raises(UserError) as err:
        resolve_gguf(cfg)
    assert str(err.value).startswith("model.path=/no/such/dir: no such folder; set serve.model_path to a .gguf")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match=rf"^serve.model_path={f}: a file, not a folder; "):
        resolve_gguf(compose("serve", [f"serve.model_path={f}", f"paths.outputs={tmp_path}"]))


def test_a_bad_line_in_the_data_stages_own_files_is_one_line_naming_file_and_line(tmp_path):
    """The data stage reads its trajectories back on every run (what is done already): a corrupt line there (not the
    torn last line, which is skipped) was a TrajectoryError traceback."""
    from cardforge.core.chat import TrajectoryError, completed_task_ids

    f = tmp_path / "out" / "data" / "trajectories.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text("garbage {\n")
    with pytest.raises(UserError) as err:
        completed_task_ids(f)
    assert isinstance(err.value, TrajectoryError)  # what callers caught before still catches it
    line = _one_line(_cli("cardforge.data", f"paths.outputs={tmp_path / 'out'}", tmp_path=tmp_path))
    assert line.startswith(f"cardforge data: error: {f} line 1: not valid JSON (")
    assert line.endswith("fix or delete that line (only a torn last line, from a killed writer, is skipped by itself)")
