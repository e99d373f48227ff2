"""An LLM judge for rejection sampling: for tasks no rule can verify, ask an OpenAI-compatible endpoint
whether the transcript (with its REAL tool outputs) shows the task actually done.

Rules decide where they can (objective and free); the LLM judge only fills the gap (`data.judge_url`).
Its reply must end in `VERDICT: PASS` or `VERDICT: FAIL`; anything else rejects the sample as unjudged.
"""

from __future__ import annotations

import re

from cardforge.core.chat import Message
from cardforge.agent.tasks import Task
from cardforge.agent.client import Sampling

JUDGE_SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=256, thinking=False)
MAX_TRANSCRIPT = 8000  # characters: the end of a long transcript matters most (the outcome)
_VERDICT = re.compile(r"VERDICT:\s*(PASS|FAIL)", re.IGNORECASE)


def transcript(messages: list[Message]) -> str:
    parts = []
    for m in messages[1:]:  # the system prompt is ours, not evidence
        if m.role == "assistant":
            calls = "".join(f"\n[call {c.name} {c.arguments}]" for c in m.tool_calls)
            parts.append(f"ASSISTANT: {m.content or ''}{calls}")
        elif m.role == "tool":
            parts.append(f"TOOL OUTPUT ({m.name}): {m.content}")
        else:
            parts.append(f"{m.role.upper()}: {m.content}")
    text = "\n".join(parts)
    return text if len(text) <= MAX_TRANSCRIPT else "...\n" + text[-MAX_TRANSCRIPT:]


def prompt(task: Task, messages: list[Message], answer: str | None) -> list[dict]:
    return [
        {"role": "system", "content": "You judge whether an AI assistant really completed a task. Trust only "
                                      "the tool outputs shown, never the assistant's claims about them."},
        {"role": "user", "content": f"TASK:\n{task.prompt}\n\nTRANSCRIPT:\n{transcript(messages)}\n\n"
                                    f"FINAL ANSWER:\n{answer or '(none)'}\n\nWas the task actually completed? "
                                    "Reply with one line 'REASON: ...' and then one line 'VERDICT: PASS' or "
                                    "'VERDICT: FAIL'."},
    ]


def parse(reply: str) -> tuple[bool | None, str]:
    """(passed, reason); passed is None when the reply holds no verdict."""
    found = _VERDICT.findall(reply or "")
    reason = next((line.split(":", 1)[1].strip() for line in (reply or "").splitlines()
                   if line.strip().upper().startswith("REASON:")), "")
    if not found:
        return None, "judge reply has no VERDICT line"
    return found[-1].upper() == "PASS", reason or "no reason given"


async def judge(judge_teacher, session, task: Task, messages: list[Message], answer: str | None) -> tuple[bool | None, str]:
    reply = await judge_teacher.ask(session, prompt(task, messages, answer), JUDGE_SAMPLING)
    if reply.error:
        return None, f"judge request failed: {reply.error}"
    return parse(reply.content)
