"""The optional LLM judge: verdict parsing, and a real judging round trip against llama-server (SmolLM2)."""

from __future__ import annotations

import asyncio

from cardforge.core.chat import Message, ToolCall
from cardforge.agent import llm_judge
from cardforge.agent.react import Options, _End, _judge
from cardforge.agent.tasks import Task


def test_parse_verdicts():
    assert llm_judge.parse("REASON: the file exists\nVERDICT: PASS") == (True, "the file exists")
    assert llm_judge.parse("thinking...\nREASON: crashed\nverdict: fail") == (False, "crashed")
    assert llm_judge.parse("I think it worked.") == (None, "judge reply has no VERDICT line")
    # the last verdict wins (a judge may quote the format first)
    assert llm_judge.parse("Answer 'VERDICT: PASS' or 'VERDICT: FAIL'.\nVERDICT: FAIL")[0] is False


def test_transcript_keeps_real_tool_output_and_the_end():
    msgs = [Message("system", "sys"), Message("user", "do it"),
            Message("assistant", "calling", tool_calls=[ToolCall(name="python", arguments={"code": "print(2)"})]),
            Message("tool", "2\n", name="python"), Message("assistant", "done: 2")]
    text = llm_judge.transcript(msgs)
    assert "sys" not in text and "TOOL OUTPUT (python): 2" in text and text.endswith("ASSISTANT: done: 2")
    long = [Message("system", "s")] + [Message("user", "x" * 1000)] * 20
    assert len(llm_judge.transcript(long)) <= llm_judge.MAX_TRANSCRIPT + 4


def test_unverifiable_task_is_decided_by_a_real_llm_judge():
    from cardforge.core.models.smollm2 import gguf_path
    from cardforge.agent.teacher import Teacher
    from cardforge.agent.client import new_session
    from cardforge.serve.launchers.llama_cpp import llama_server

    task = Task("user/poem", "jsonl", "Write one line about the sea.")  # verifier "none": no rule applies
    msgs = [Message("system", "s"), Message("user", task.prompt), Message("assistant", "The sea is wide and blue.")]
    with llama_server(gguf_path(), {"ctx_size": 2048, "mtp": {"enabled": False}}) as srv:
        judge = Teacher(srv.base_url, None, llm_judge.JUDGE_SAMPLING, 120.0, 1, 1, label="smollm2-judge")
        opts = Options("execute", 4, True, llm_judge=judge)

        async def go():
            async with new_session(1) as session:
                return await _judge(task, _End("stop"), "The sea is wide and blue.", [], None, opts, session, msgs)

        verdict, extra = asyncio.run(go())
    assert verdict.judge == "llm"  # the rules could not decide, so the LLM judge did
    assert "llm_judge" in extra and extra["verified"] is None
    if verdict.status == "accepted":
        assert extra["reason"] is None
    else:
        assert extra["reason"] in ("judge_failed", "judge_unparseable")
        assert verdict.reason.startswith(extra["reason"])
