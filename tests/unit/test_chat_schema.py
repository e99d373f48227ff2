"""Trajectory schema + JSONL: validation errors name record and field; whole lines survive kill -9;
`datasets` loads the files with one schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from cardforge.core.chat import (
    SCHEMA_VERSION,
    Message,
    ToolCall,
    TornLineWarning,
    Trajectory,
    TrajectoryError,
    append_jsonl,
    completed_task_ids,
    load_jsonl,
    read_jsonl,
    write_jsonl,
)


def make(task_id: str = "t1", with_tools: bool = True) -> Trajectory:
    msgs = [Message("system", "You solve tasks."), Message("user", "What is 2+3?")]
    if with_tools:
        msgs += [Message("assistant", "", "I will add.", [ToolCall("add", {"a": 2, "b": 3, "note": "x"}, "c1")]),
                 Message("tool", "5", tool_call_id="c1", name="add")]
    msgs.append(Message("assistant", "5", "The tool said 5."))
    return Trajectory(task_id, msgs, source="unit", teacher="tiny", tools=[{"type": "function", "function": {
        "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}])


def test_file_form_round_trips_and_is_string_typed_where_free_form():
    t = make()
    d = t.to_dict()
    assert d["schema_version"] == SCHEMA_VERSION == 1
    assert isinstance(d["messages"][2]["tool_calls"][0]["arguments"], str)
    assert json.loads(d["messages"][2]["tool_calls"][0]["arguments"]) == {"a": 2, "b": 3, "note": "x"}
    assert isinstance(d["tools"], str) and isinstance(d["extra"], str)
    back = Trajectory.from_dict(json.loads(json.dumps(d)))
    assert back == t
    assert back.messages[2].tool_calls[0].arguments == {"a": 2, "b": 3, "note": "x"}  # typed in the API


def test_openai_shape_is_accepted():
    d = {"schema_version": 1, "task_id": "x", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c9", "type": "function", "function": {"name": "f", "arguments": "{\"q\": [1, 2]}"}}]},
        {"role": "tool", "tool_call_id": "c9", "content": "ok"}]}
    t = Trajectory.from_dict(d)
    assert t.messages[1].tool_calls == [ToolCall("f", {"q": [1, 2]}, "c9")]


@pytest.mark.parametrize("mutate,path,problem", [
    (lambda d: d.update(schema_version=2), "schema_version", "2 is not supported"),
    (lambda d: d.update(task_id=""), "task_id", "empty"),
    (lambda d: d["messages"][2]["tool_calls"][0].update(arguments="[1, 2]"), "messages[2].tool_calls[0].arguments",
     "expected a JSON object, got list"),
    (lambda d: d["messages"][2]["tool_calls"][0].update(arguments="{oops"), "messages[2].tool_calls[0].arguments",
     "not valid JSON"),
    (lambda d: d["messages"][1].update(role="robot"), "messages[1].role", "'robot' is not one of"),
    (lambda d: d["messages"][1].update(reasoning_content="hm"), "messages[1].reasoning_content", "only assistant"),
    (lambda d: d["messages"][3].update(tool_call_id="nope"), "messages[3].tool_call_id", "matches no call"),
    (lambda d: d["messages"][4].update(colour="red"), "messages[4].colour", "unknown field"),
    (lambda d: d["messages"].insert(1, {"role": "tool", "content": "x"}), "messages[1].role", "must follow"),
    (lambda d: d["verdict"].update(status="maybe"), "verdict.status", "'maybe' is not one of"),
    (lambda d: d["timings"].update(total_s="fast"), "timings.total_s", "expected int or float, got str"),
    (lambda d: d.update(finish_reason="bored"), "finish_reason", "'bored' is not one of"),
])
def test_validation_errors_name_record_and_field(mutate, path, problem):
    d = make().to_dict()
    mutate(d)
    with pytest.raises(TrajectoryError) as e:
        Trajectory.from_dict(d, "data.jsonl line 7")
    assert e.value.path == path
    assert problem in str(e.value)
    assert str(e.value).startswith("data.jsonl line 7")
    if path != "task_id":
        assert "task_id 't1'" in str(e.value)


def test_bad_line_in_a_file_names_the_line(tmp_path):
    f = tmp_path / "d.jsonl"
    good = json.dumps(make().to_dict())
    bad = make("t2").to_dict()
    bad["messages"][0]["role"] = "narrator"
    f.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TrajectoryError, match=r"d.jsonl line 2 \(task_id 't2'\): messages\[0\].role"):
        load_jsonl(f)
    f.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(TrajectoryError, match=r"d.jsonl line 2: not valid JSON"):
        load_jsonl(f)


def test_torn_last_line_is_ignored_reported_and_cut_by_the_next_append(tmp_path):
    f = tmp_path / "d.jsonl"
    write_jsonl(f, [make("a"), make("b")])
    whole = f.read_bytes()
    line_c = json.dumps(make("c").to_dict()).encode()
    f.write_bytes(whole + line_c[:50])  # a writer died mid-line
    records, torn = read_jsonl(f)
    assert [r.task_id for r in records] == ["a", "b"]
    assert (torn.offset, torn.size) == (len(whole), 50)
    with pytest.warns(TornLineWarning, match="torn last line"):
        assert len(load_jsonl(f)) == 2
    with pytest.warns(TornLineWarning):
        append_jsonl(f, make("c"))
    assert f.read_bytes() == whole + line_c + b"\n"
    assert [r.task_id for r in load_jsonl(f)] == ["a", "b", "c"]


WRITER = textwrap.dedent("""
    import sys, time
    from cardforge.core.chat import Message, Trajectory, append_jsonl, completed_task_ids
    def make(task_id):
        return Trajectory(task_id, [Message("user", "q" * 500), Message("assistant", "a" * 500, "r" * 500)])
    path = sys.argv[1]
    done = completed_task_ids(path)
    for i in range(400):
        if f"task{i}" in done:
            continue  # resume: never write a task twice
        append_jsonl(path, make(f"task{i}"))
        print(i, flush=True)
        time.sleep(0.002)
""")


def test_kill_9_mid_run_then_rerun_gives_no_duplicate_and_no_torn_line(tmp_path):
    f, script = tmp_path / "run.jsonl", tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(f)], stdout=subprocess.PIPE, text=True)
    for _ in range(20):  # let it write some lines, then kill it without warning
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(f, "ab") as fh:  # and make the worst case certain: a torn tail like a kill inside write()
        fh.write(b'{"schema_version": 1, "task_id": "task')
    first = completed_task_ids(f)
    assert 20 <= len(first) < 400
    rerun = subprocess.run([sys.executable, str(script), str(f)], check=True, capture_output=True, text=True)
    assert "torn last line" in rerun.stderr  # the resumed writer reported the tail it cut
    raw = f.read_bytes()
    assert raw.endswith(b"\n")
    records, torn = read_jsonl(f)
    ids = [r.task_id for r in records]
    assert torn is None and len(ids) == len(set(ids)) == 400


def test_datasets_loads_the_file_with_consistent_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    f = tmp_path / "d.jsonl"
    # first rows without any tool call, later ones with: column types must still agree
    write_jsonl(f, [make(f"p{i}", with_tools=False) for i in range(3)] + [make(f"q{i}") for i in range(3)])
    ds = datasets.load_dataset("json", data_files=str(f), split="train")
    assert len(ds) == 6
    row = ds[5]
    assert row["messages"][2]["tool_calls"][0]["name"] == "add"
    assert json.loads(row["messages"][2]["tool_calls"][0]["arguments"]) == {"a": 2, "b": 3, "note": "x"}
    assert ds[0]["messages"][1]["tool_calls"] == []
    assert Trajectory.from_dict(row) == make("q2")  # a datasets row validates back into the API form
