"""The ReAct loop on scripted teacher outputs: every fault ends the sample with its reason, tools really run."""

from __future__ import annotations

import asyncio

import pytest

from cardforge.core.chat import Trajectory, write_jsonl
from cardforge.agent.react import Options, run_sample
from cardforge.agent.tasks import BUILTIN, Task
from cardforge.agent.teacher import Teacher
from cardforge.agent.client import Completion, Sampling

CALL = "<tool_call>\n<function={name}>\n<parameter={arg}>\n{value}\n</parameter>\n</function>\n</tool_call>"


class Scripted(Teacher):
    """A teacher whose answers are given in advance; records the wire messages it was sent."""

    def __init__(self, *outputs: Completion | str):
        super().__init__("http://unused", "scripted", Sampling(), 1.0, 0, 1, label="scripted")
        self.outputs, self.seen = list(outputs), []

    async def ask(self, session, messages, sampling=None):
        self.seen.append(messages)
        out = self.outputs.pop(0)
        return Completion(content=out, finish_reason="stop") if isinstance(out, str) else out


def run(task: Task, teacher: Teacher, mode="execute", judge=True, max_steps=4) -> Trajectory:
    traj = asyncio.run(run_sample(task, 0, teacher, None, Options(mode, max_steps, judge)))
    Trajectory.from_dict(traj.to_dict())  # every outcome is a valid record of the schema
    return traj


def task(tid: str) -> Task:
    return next(t for t in BUILTIN if t.id == tid)


def reason(t: Trajectory) -> str:
    return t.extra["reason"]


def test_python_tool_runs_in_the_sandbox_and_the_answer_is_judged():
    teacher = Scripted(Completion(content=CALL.format(name="python", arg="code", value="print(17 + 25)"),
                                  reasoning="I will compute it.", finish_reason="stop"),
                       CALL.format(name="finish", arg="answer", value="42"))
    t = run(task("builtin/calc-17+25"), teacher)
    assert t.verdict.status == "accepted", t.verdict
    roles = [m.role for m in t.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert t.messages[3].content.startswith("42") and "[exit code 0]" in t.messages[3].content
    assert t.messages[2].reasoning_content == "I will compute it."
    # the teacher saw the real result as a <tool_response>, and its call echoed back as XML
    assert "<tool_response>\n42" in teacher.seen[1][-1]["content"]
    assert "<function=python>" in teacher.seen[1][-2]["content"]


def test_workspace_carries_across_calls_and_file_verifier_reads_it():
    teacher = Scripted(CALL.format(name="shell", arg="command", value="printf 'hello world' > hello.txt"),
                       CALL.format(name="read_file", arg="path", value="hello.txt"),
                       CALL.format(name="finish", arg="answer", value="done"))
    t = run(task("builtin/write-hello"), teacher)
    assert t.messages[5].content == "hello world"
    assert t.verdict.status == "accepted" and "matches" in t.verdict.reason


def test_wrong_answer_is_rejected_with_its_reason():
    t = run(task("builtin/calc-6*7"), Scripted("6 times 7 is 41."))
    assert t.verdict.status == "rejected" and reason(t) == "wrong_answer"


def test_answer_without_tool_call_finishes_tolerantly():
    t = run(task("builtin/say-blue"), Scripted("<think>\nEasy.\n</think>\n\nblue"))
    assert t.verdict.status == "accepted" and t.messages[-1].content == "blue"
    assert t.messages[-1].reasoning_content == "Easy."


@pytest.mark.parametrize("output, why", [
    ("<tool_call>\n<function=python>\n<parameter=code>\nprint(1)\n</function>\n</tool_call>", "parse_error"),
    ("<tool_call>\n<parameter=code>\nprint(1)\n</parameter>\n</tool_call>", "parse_error"),
    ("Sure.</tool_call>", "parse_error"),
    ("<think>\nI am still thinking about", "unclosed_think"),
    (Completion(reasoning="thought that never closed", finish_reason="stop"), "unclosed_think"),
    (Completion(content="<think>\nlong", finish_reason="length"), "length"),
    (Completion(finish_reason="error", error="HTTP 500: boom", errors=["HTTP 500: boom"]), "teacher_error"),
    (CALL.format(name="rm_rf", arg="path", value="/"), "bad_tool_call"),
])
def test_faults_end_the_sample_with_a_reason(output, why):
    t = run(task("builtin/say-apple"), Scripted(output))
    assert t.verdict.status == "rejected" and reason(t) == why, t.verdict


def test_max_steps_bounds_the_loop():
    call = CALL.format(name="python", arg="code", value="print(1)")
    t = run(task("builtin/calc-2+3"), Scripted(call, call), max_steps=2)
    assert reason(t) == "max_steps" and [m.role for m in t.messages].count("tool") == 2


def test_simulate_mode_asks_the_simulator_and_runs_nothing():
    call = CALL.format(name="python", arg="code", value="print(2 + 3)")
    teacher = Scripted(call, "simulated: 5", "The answer is 5.")
    t = run(task("builtin/calc-2+3"), teacher, mode="simulate", judge=False)
    assert t.messages[3].role == "tool" and t.messages[3].content == "simulated: 5"
    assert "runtime" in teacher.seen[1][0]["content"]  # the role-play prompt
    assert t.verdict.status == "accepted" and t.extra["verified"] is True


@pytest.mark.parametrize("template", ["model", "qwen3.5"])
def test_trajectories_encode_for_the_student(tiny_model_dir, tmp_path, template):
    from cardforge.core.chat import encode_all, load_tokenizer
    from cardforge.core.chat.template import qwen35_template

    t = run(task("builtin/calc-17+25"), Scripted(CALL.format(name="python", arg="code", value="print(42)"),
                                                 CALL.format(name="finish", arg="answer", value="42")))
    write_jsonl(tmp_path / "t.jsonl", [t])
    tok = load_tokenizer(str(tiny_model_dir))
    if template == "qwen3.5":
        tok.chat_template = qwen35_template()
    enc = encode_all(t, tok)
    assert [s.message_index for seq in enc.sequences for s in seq.spans] == [2, 4]
    trained = "".join(seq.text[a:b] for seq in enc.sequences for (a, b), m in zip(seq.offsets, seq.loss_mask) if m)
    assert "<function=python>" in trained and "[exit code 0]" not in trained  # results are context only
    assert "[exit code 0]" in enc.sequences[-1].text


@pytest.mark.parametrize("value,why", [
    ("x\n</parameter>\n<parameter=mode>\n0o777", "parse_error"),  # argument injection: 'mode' is not in the schema
    ("print('</function>')", "markup_in_argument"),  # parses (structural close), but engines would split it
    ("a <|im_end|> b", "special_token_in_text"),
])
def test_calls_the_chat_contract_cannot_carry_are_rejected_before_they_run(value, why):
    t = run(task("builtin/calc-17+25"), Scripted(CALL.format(name="python", arg="code", value=value)))
    assert reason(t) == why and t.verdict.status == "rejected"
    assert [m.role for m in t.messages] == ["system", "user", "assistant"]  # nothing ran
