"""The served model's identity in the resume key: records.finished_ids / current_by_id and stage.model_id."""

from __future__ import annotations

import hashlib
import os
import time

from cardforge.eval import stage
from support.fake_server import FakeServer
from cardforge.eval.records import append_record, current_by_id, finished_ids
from cardforge.eval.stage import Target, gguf_id, model_id


def _rec(qid, model_id=None, finish="stop", prompt="p", sampling="s", **kw):
    r = {"id": qid, "prompt_hash": prompt, "sampling_hash": sampling, "finish_reason": finish, **kw}
    if model_id is not None:
        r["model_id"] = model_id
    return r


def test_finished_needs_the_same_model(tmp_path):
    out = tmp_path / "r.jsonl"
    hashes = {"q0": "p", "q1": "p", "q2": "p", "q3": "p"}
    append_record(out, _rec("q0"))  # legacy: no model id
    append_record(out, _rec("q1", "A"))
    append_record(out, _rec("q2", "A", finish="error"))
    append_record(out, _rec("q1", "B"))  # B answered q1 after A did
    append_record(out, _rec("q3", "A", finish="length"))
    assert finished_ids(out, hashes, "s", "A") == {"q1", "q3"}  # B's newer q1 does not hide A's
    assert finished_ids(out, hashes, "s", "B") == {"q1"}
    assert finished_ids(out, hashes, "s", "C") == set()  # a rebuilt model: everything is asked again
    assert finished_ids(out, hashes, "s") == {"q0"}  # no id only matches records without one
    assert finished_ids(out, hashes, "other-sampling", "A") == set()
    assert current_by_id(out, hashes, "s", "A")["q2"]["finish_reason"] == "error"  # retried on resume


def test_gguf_id_is_the_file_sha256_and_follows_a_rebuild(tmp_path, monkeypatch):
    gguf, cache = tmp_path / "m.gguf", tmp_path / "ids.json"
    gguf.write_bytes(b"GGUF" + b"\0" * 4096)
    calls = []
    real = stage.sha256_file
    monkeypatch.setattr(stage, "sha256_file", lambda p: calls.append(p) or real(p))
    first = gguf_id(gguf, cache)
    assert first == "gguf-sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert gguf_id(gguf, cache) == first and len(calls) == 1  # unchanged file: the cached hash
    # a rebuild with the same size, even with the old mtime put back, is a new model
    st = gguf.stat()
    time.sleep(0.05)  # the kernel's ctime clock ticks per jiffy (a real rebuild takes far longer than one)
    gguf.write_bytes(b"GGUF" + b"\1" * 4096)
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = gguf_id(gguf, cache)
    assert second != first and len(calls) == 2
    assert model_id(Target("distill", gguf=gguf), cache) == second
    assert gguf_id(gguf) == second  # no cache: hashed every time


def test_endpoint_id_is_the_url_when_the_server_has_no_props(tmp_path):
    with FakeServer() as srv:  # no /props: the endpoint's URL is all the stage can know
        assert model_id(Target("distill", endpoint=srv.base_url), tmp_path / "ids.json") == \
            f"endpoint:{srv.base_url}"


def test_endpoint_id_names_what_a_vllm_or_sglang_server_serves(tmp_path):
    """Behind an OpenAI-compatible server without llama-server's /props (vLLM, SGLang), the identity carries each
    /v1/models entry's id and root (the checkpoint): another checkpoint behind the same URL is a new model."""
    import http.server
    import json
    import threading

    served = {"data": [{"id": "Distill", "object": "model", "root": "/ckpt/distill-v1"}]}

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = json.dumps(served).encode() if self.path == "/v1/models" else b"{}"
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        first = model_id(Target("distill", endpoint=url))
        assert first == f"endpoint:{url}|models:Distill@/ckpt/distill-v1"
        served["data"][0]["root"] = "/ckpt/distill-v2"  # redeployed: same name, same URL, other checkpoint
        assert model_id(Target("distill", endpoint=url)) != first
    finally:
        srv.shutdown()


def test_one_appender_for_records_and_trajectories(tmp_path):
    """eval records, the MTP sequences and the teacher's spend ledger use core.chat.jsonl's appender: a torn
    last line (a writer killed mid-write) is skipped by readers and cut off by the next append."""
    import multiprocessing

    from cardforge.core.chat import jsonl
    from cardforge.eval import records

    assert records.append_record is jsonl.append_record and records.read_records is jsonl.read_records
    out = tmp_path / "r.jsonl"
    append_record(out, _rec("q0"))
    with open(out, "ab") as f:
        f.write(b'{"id": "q1", "prompt_ha')  # torn
    assert [r["id"] for r in records.read_records(out)] == ["q0"]
    torn = append_record(out, _rec("q2"))
    assert torn is not None and torn.size == len(b'{"id": "q1", "prompt_ha')
    assert [r["id"] for r in records.read_records(out)] == ["q0", "q2"]
    with multiprocessing.get_context("fork").Pool(4) as pool:  # concurrent writers take turns: whole lines
        pool.starmap(append_record, [(out, _rec(f"p{i}", answer="x" * 5000)) for i in range(40)])
    got = records.read_records(out)
    assert len(got) == 42 and {r["id"] for r in got} >= {f"p{i}" for i in range(40)}
    try:
        append_record(out, ["not", "a", "dict"])
    except TypeError as e:
        assert "dict" in str(e)
    else:
        raise AssertionError("a list must be refused")
